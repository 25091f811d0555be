"""The shape of the source tree: one supervised training loop, one run driver, short functions,
signatures of at most 8 parameters, files of at most 500 lines (the CLI at most 300).

These read the source with :mod:`ast`; they fail when a second training loop or run driver
appears, a function grows past the length a reader can hold at once, a signature takes more
parameters than a reader can keep apart, or a file grows past what one reading covers.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "datadistill"
MAX_LINES = 60

# every place that trains a network on labelled data (the baselines train through evaluate's
# protocols), and every place that drives N independent runs
FIT_USERS = ["evaluation/classic.py", "evaluation/ddranking_train.py", "experts/train.py",
             "experts/difficulty.py", "infer/teachers_train.py", "infer/student.py"]
RUN_DRIVER_USERS = ["evaluation/protocols.py", "evaluation/baselines.py", "evaluation/ddranking.py",
                    "infer/student.py", "experts/train.py", "infer/teachers_train.py"]


def _modules() -> dict[str, ast.Module]:
    return {str(p.relative_to(SRC)): ast.parse(p.read_text(), filename=str(p))
            for p in sorted(SRC.rglob("*.py"))}


MODULES = _modules()


def _functions(tree: ast.Module):
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def _module_level(tree: ast.Module, name: str) -> bool:
    return any(isinstance(n, ast.FunctionDef) and n.name == name for n in tree.body)


def _imports(tree: ast.Module, module: str, name: str) -> bool:
    return any(isinstance(n, ast.ImportFrom) and n.module == module
               and any(a.name == name for a in n.names) for n in ast.walk(tree))


def _calls_optimizer_step(tree: ast.Module) -> list[int]:
    """Lines that call ``<optimiser>.step()`` with no argument (a training step)."""
    lines = []
    for n in ast.walk(tree):
        if (isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
                and n.func.attr == "step" and not n.args and not n.keywords
                and isinstance(n.func.value, ast.Name)
                and n.func.value.id in {"opt", "optimizer", "optimiser", "optim"}):
            lines.append(n.lineno)
    return lines


def test_no_function_is_longer_than_sixty_lines():
    long = [(path, f.name, f.end_lineno - f.lineno + 1)
            for path, tree in MODULES.items() for f in _functions(tree)
            if f.end_lineno - f.lineno + 1 > MAX_LINES]
    assert long == [], f"functions over {MAX_LINES} lines: {long}"


def test_one_supervised_training_loop():
    defining = [p for p, tree in MODULES.items() if _module_level(tree, "fit")]
    assert defining == ["training.py"]
    for path in FIT_USERS:
        assert _imports(MODULES[path], "datadistill.training", "fit"), f"{path} does not use fit"
    # the optimiser steps of supervised training happen in training.py only; distill.py steps
    # the synthetic set and INFER's compensators their own vectors
    stepping = {p for p, tree in MODULES.items() if _calls_optimizer_step(tree)}
    assert stepping <= {"training.py", "tm/distill.py", "infer/compensators.py"}, stepping


def _deals_out_by_rank(tree: ast.Module) -> list[int]:
    """Lines where a module splits work between processes itself: a call of a ``shard``
    function, or a slice stepped by the world size (``items[rank()::world_size()]``)."""
    lines = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Call):
            name = n.func.attr if isinstance(n.func, ast.Attribute) else getattr(n.func, "id", "")
            if name == "shard":
                lines.append(n.lineno)
        elif isinstance(n, ast.Slice) and n.step is not None and "world_size" in ast.unparse(
                n.step):
            lines.append(n.lineno)
    return lines


def test_one_run_driver():
    defining = [p for p, tree in MODULES.items() if _module_level(tree, "run_all")]
    assert defining == ["runs.py"]
    for path in RUN_DRIVER_USERS:
        assert _imports(MODULES[path], "datadistill.runs", "run_all"), \
            f"{path} does not use run_all"
    # N independent trainings are dealt out to the processes by run_all's rounds alone
    private = {p: lines for p, tree in MODULES.items() if p != "runs.py"
               and (lines := _deals_out_by_rank(tree))}
    assert private == {}, f"work split by rank outside run_all: {private}"


@pytest.mark.parametrize("source, found", [
    ("for i in distributed.shard(todo):\n    train(i)\n", True),
    ("for i in shard(todo):\n    train(i)\n", True),
    ("mine = todo[distributed.rank()::distributed.world_size()]\n", True),
    ("run_all(n, one_run, done=OnDisk(exists))\n", False),
    ("last = todo[::2]\n", False),
])
def test_the_run_driver_check_sees_a_private_loop(source, found):
    assert bool(_deals_out_by_rank(ast.parse(source))) is found


@pytest.mark.parametrize("source, found", [
    ("def f():\n" + "    x = 1\n" * 61, True),
    ("def f():\n" + "    x = 1\n" * 10, False),
])
def test_the_length_check_sees_a_long_function(source, found):
    tree = ast.parse(source)
    assert any(f.end_lineno - f.lineno + 1 > MAX_LINES for f in _functions(tree)) is found


def test_the_step_check_sees_a_training_step():
    assert _calls_optimizer_step(ast.parse("opt.zero_grad()\nloss.backward()\nopt.step()\n"))
    assert not _calls_optimizer_step(ast.parse("sched.step()\n"))



# ----------------------------------------------------------------------------- sizes
MAX_PARAMS = 8  # parameters of one signature, self/cls left out (dataclass __init__ is generated)
MAX_FILE_LINES = 500
MAX_CLI_LINES = 300
# Top-level modules of the package besides its packages (__init__ and __main__ included).
MAX_TOP_LEVEL_MODULES = 12


def parameter_count(f: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Positional-only + positional + keyword-only parameters, plus one each for ``*args`` and
    ``**kwargs``; a leading ``self`` or ``cls`` is not counted (``ctx`` of an autograd
    function's static methods is)."""
    a = f.args
    names = [p.arg for p in (*a.posonlyargs, *a.args)]
    count = len(names) + len(a.kwonlyargs) + (a.vararg is not None) + (a.kwarg is not None)
    return count - (bool(names) and names[0] in ("self", "cls"))


def over_long(paths, limit: int, root: Path = SRC) -> dict[str, int]:
    """path -> line count of the files under ``root`` longer than ``limit`` lines."""
    counts = {p: len((root / p).read_text().splitlines()) for p in paths}
    return {p: n for p, n in counts.items() if n > limit}


def test_no_signature_has_more_than_eight_parameters():
    wide = {(path, f.name): parameter_count(f) for path, tree in MODULES.items()
            for f in _functions(tree) if parameter_count(f) > MAX_PARAMS}
    assert wide == {}, f"signatures over {MAX_PARAMS} parameters (bundle them): {wide}"


@pytest.mark.parametrize("source, count", [
    ("def f(a, b, c, d, e, f, g, h, i): pass", 9),
    ("def f(a, b, c, d, e, f, g, h): pass", 8),
    ("def f(a, /, b, *args, c, d=1, **kw): pass", 6),
    ("class A:\n    def m(self, a, b, c, d, e, f, g, h): pass", 8),
    ("class A:\n    @classmethod\n    def m(cls, a, b, c, d, e, f, g, h, i): pass", 9),
    ("class F:\n    @staticmethod\n    def forward(ctx, a, b, c, d, e, f, g, h): pass", 9),
])
def test_the_parameter_check_sees_a_wide_signature(source, count):
    (f,) = _functions(ast.parse(source))
    assert parameter_count(f) == count
    assert (parameter_count(f) > MAX_PARAMS) is (count == 9)


def test_no_file_is_longer_than_500_lines():
    long = over_long(MODULES, MAX_FILE_LINES)
    assert long == {}, f"files over {MAX_FILE_LINES} lines (split them): {long}"


def test_cli_is_at_most_300_lines():
    long = over_long(["cli.py"], MAX_CLI_LINES)
    assert long == {}, f"cli.py is over {MAX_CLI_LINES} lines: {long}"


def test_at_most_twelve_top_level_modules():
    top = sorted(p for p in MODULES if "/" not in p)
    assert len(top) <= MAX_TOP_LEVEL_MODULES, f"{len(top)} top-level modules: {top}"


def test_the_line_checks_see_a_long_file(tmp_path):
    (tmp_path / "long.py").write_text("x = 1\n" * 501)
    (tmp_path / "short.py").write_text("x = 1\n" * 500)
    assert over_long(["long.py", "short.py"], MAX_FILE_LINES, tmp_path) == {"long.py": 501}
    assert over_long(["short.py"], MAX_CLI_LINES, tmp_path) == {"short.py": 500}


# ----------------------------------------------------------------------------- import graph
# Layers, lowest first. A component imports only its own layer or lower ones; every module not
# named here (pipeline, distill, infer, report, cli, evaluation, ...) sits above all of them.
LAYERS = {
    **dict.fromkeys(("errors", "runtime", "io", "config", "distributed", "labels"), 0),
    **dict.fromkeys(("data", "models"), 1),
    **dict.fromkeys(("training", "matching"), 2),
    **dict.fromkeys(("runs", "experts", "checks"), 3),
    "artifacts": 4,
    "evaluation": 5,
    "recipes": 6,  # the registry: it knows each recipe by module name only
}
TOP = max(LAYERS.values()) + 1
# Function-local imports of datadistill modules that stay local, and why. Every other import
# is at module level, so the graph a reader sees at the top of a file is the whole graph.
LOCAL_IMPORTS = {
    "cli": "startup speed of the CLI: a command loads only the modules it runs",
    "commands": "the same for the sub-commands the CLI collects from tm/, infer/, evaluation/",
    "curves": "matplotlib loads only when a figure is drawn",
    "grids": "Pillow's drawing loads only when a grid is drawn",
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULE_NAMES = {_module_name(SRC / p): p for p in MODULES}


def _existing(name: str) -> str:
    while name not in MODULE_NAMES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def _type_checking_only(node: ast.AST, parents: dict) -> bool:
    parent = parents.get(node)
    return isinstance(parent, ast.If) and "TYPE_CHECKING" in ast.unparse(parent.test)


def _local(node: ast.AST, parents: dict) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return True
    return False


def _targets(node: ast.AST, importer: str, busy: set[str]) -> set[str]:
    """The datadistill modules an import statement runs: the named module, an imported
    submodule, and every package ``__init__`` on the way in from outside that package that
    imports anything itself (``busy``; a docstring-only ``__init__`` runs nothing)."""
    if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("datadistill"):
        named = set() if node.module == "datadistill" else {_existing(node.module)}
        named |= {f"{node.module}.{a.name}" for a in node.names
                  if f"{node.module}.{a.name}" in MODULE_NAMES}
    elif isinstance(node, ast.Import):
        named = {_existing(a.name) for a in node.names if a.name.startswith("datadistill.")}
    else:
        return set()
    out = named - {importer}  # `from datadistill.data import x` inside data/ runs data/__init__
    for name in named:
        parts = name.split(".")
        for i in range(2, len(parts)):  # the packages on the way: datadistill.data, ...
            package = ".".join(parts[:i])
            if not importer.startswith(package + ".") and package != importer \
                    and package in busy:
                out.add(package)
    return out


def import_graph(modules: dict[str, ast.Module] | None = None
                 ) -> dict[str, dict[str, list[tuple[int, bool]]]]:
    """importer -> imported -> [(line, function-local)], over every datadistill import
    (module level and inside functions; ``if TYPE_CHECKING`` annotations left out)."""
    graph: dict[str, dict[str, list[tuple[int, bool]]]] = {}
    modules = MODULES if modules is None else modules
    busy = {_module_name(SRC / path) for path, tree in modules.items()
            if path.endswith("__init__.py") and any(
                isinstance(n, (ast.Import, ast.ImportFrom)) and "datadistill" in ast.unparse(n)
                for n in ast.walk(tree))}
    for path, tree in modules.items():
        importer = _module_name(SRC / path)
        parents = {c: n for n in ast.walk(tree) for c in ast.iter_child_nodes(n)}
        edges = graph.setdefault(importer, {})
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and not _type_checking_only(
                    node, parents):
                for target in _targets(node, importer, busy):
                    edges.setdefault(target, []).append((node.lineno, _local(node, parents)))
    return graph


def find_cycle(graph: dict[str, dict]) -> list[str] | None:
    """One import cycle as a path ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def _layer(module: str) -> int:
    return LAYERS.get(module.split(".")[1] if "." in module else module, TOP)


def upward_imports(graph: dict[str, dict]) -> list[str]:
    """Imports from a component into a higher layer (or into the recipes, report, CLI)."""
    return sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets
                  if _layer(a) < TOP and _layer(b) > _layer(a))


def test_no_import_cycle():
    assert find_cycle(import_graph()) is None


def test_no_component_imports_a_layer_above_it():
    assert upward_imports(import_graph()) == []


def test_the_report_never_imports_a_recipe():
    graph = import_graph()
    reached = {b for a, targets in graph.items() if a.startswith("datadistill.report")
               for b in targets}
    assert reached and not {b for b in reached
                            if b.split(".")[1] in {"tm", "infer", "cli"}}, reached


def test_function_local_imports_are_only_the_listed_ones():
    local = sorted(f"{a} -> {b} (line {line})" for a, targets in import_graph().items()
                   for b, uses in targets.items() for line, is_local in uses
                   if is_local and a.split(".")[-1] not in LOCAL_IMPORTS
                   and b.split(".")[-1] not in LOCAL_IMPORTS)
    assert local == []


def _toy(sources: dict[str, str]) -> dict[str, ast.Module]:
    return {path: ast.parse(text) for path, text in sources.items()}


def test_the_graph_sees_cycles_through_a_package_init_and_local_imports():
    assert find_cycle(import_graph(_toy({
        "tm/pipeline.py": "def f():\n    from datadistill.tm.repair import g\n",
        "tm/repair.py": "from datadistill.tm.pipeline import f\n"}))) == [
        "datadistill.tm.pipeline", "datadistill.tm.repair", "datadistill.tm.pipeline"]
    # importing data.registry from outside runs data/__init__, which imports mnist
    cycle = find_cycle(import_graph(_toy({
        "data/__init__.py": "from datadistill.data.mnist import x\n",
        "data/mnist.py": "from datadistill.report.page import y\n",
        "report/page.py": "from datadistill.data.registry import z\n"})))
    assert cycle == ["datadistill.data", "datadistill.data.mnist", "datadistill.report.page",
                     "datadistill.data"]
    assert find_cycle(import_graph(_toy({"io.py": "import datadistill.config\n",
                                         "config.py": "x = 1\n"}))) is None


def test_the_layer_check_sees_an_upward_import():
    graph = import_graph(_toy({
        "labels.py": "from datadistill.matching.soft_labels import f\n",
        "data/__init__.py": "def f():\n    from datadistill.tm.pipeline import g\n"}))
    assert upward_imports(graph) == ["datadistill.data -> datadistill.tm.pipeline",
                                     "datadistill.labels -> datadistill.matching.soft_labels"]
