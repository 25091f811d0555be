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
FIT_USERS = ["evaluate.py", "ddranking_train.py", "experts/train.py",
             "experts/difficulty.py", "infer/teachers_train.py", "infer/student.py"]
RUN_DRIVER_USERS = ["evaluate.py", "baselines.py", "ddranking.py", "infer/student.py"]


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
    assert stepping <= {"training.py", "distill.py", "infer/compensators.py"}, stepping


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
