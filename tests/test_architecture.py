"""The shape of the source tree: one supervised training loop, one run driver, short functions.

These read the source with :mod:`ast`; they fail when a second training loop or run driver
appears, or a function grows past the length a reader can hold at once.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "datadistill"
MAX_LINES = 60
LONG_ALLOWED = {("cli.py", "build_parser")}  # the argparse builder: one flat list of options

# every place that trains a network on labelled data (the baselines train through evaluate's
# protocols), and every place that drives N independent runs
FIT_USERS = ["evaluation/classic.py", "evaluation/ddranking_train.py", "experts/train.py",
             "experts/difficulty.py", "infer/teachers_train.py", "infer/student.py"]
RUN_DRIVER_USERS = ["evaluation/protocols.py", "evaluation/baselines.py", "evaluation/ddranking.py",
                    "infer/student.py"]


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
            if f.end_lineno - f.lineno + 1 > MAX_LINES and (path, f.name) not in LONG_ALLOWED]
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


def test_one_run_driver():
    defining = [p for p, tree in MODULES.items() if _module_level(tree, "run_all")]
    assert defining == ["runs.py"]
    for path in RUN_DRIVER_USERS:
        assert _imports(MODULES[path], "datadistill.runs", "run_all"), \
            f"{path} does not use run_all"


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
