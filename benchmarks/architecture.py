"""Counts of a source tree's shape, for RESULTS section 16: top-level modules and packages,
the longest files, cli.py's length, the widest signatures, function over 60 lines, and
function-local imports of datadistill modules.

    python benchmarks/architecture.py src/datadistill [OLD_TREE/src/datadistill]

Each tree is read with :mod:`ast` only (nothing is imported).
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path


def _params(f: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    a = f.args
    n = len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs) + bool(a.vararg) + bool(a.kwarg)
    first = (a.posonlyargs + a.args)[:1]
    return n - (1 if first and first[0].arg in ("self", "cls") else 0)


def _local_imports(tree: ast.Module) -> int:
    count = 0
    for f in ast.walk(tree):
        if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for n in f.body:
                for m in ast.walk(n):
                    if isinstance(m, ast.ImportFrom) and (m.module or "").startswith(
                            "datadistill"):
                        count += 1
    return count


def shape(src: Path) -> dict:
    files = sorted(src.rglob("*.py"))
    trees = {p: ast.parse(p.read_text()) for p in files}
    lines = {p: len(p.read_text().splitlines()) for p in files}
    funcs = [(p, f) for p, t in trees.items() for f in ast.walk(t)
             if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))]
    wide = sorted(((_params(f), f"{p.relative_to(src)}:{f.name}") for p, f in funcs),
                  reverse=True)
    longest = sorted(((n, str(p.relative_to(src))) for p, n in lines.items()), reverse=True)
    return {
        "top-level modules": len([p for p in src.glob("*.py")]),
        "packages": len([d for d in src.iterdir() if (d / "__init__.py").is_file()
                         and d.name != "configs"]),
        "python files": len(files),
        "lines": sum(lines.values()),
        "files over 500 lines": [f"{p} ({n})" for n, p in longest if n > 500],
        "longest file": f"{longest[0][1]} ({longest[0][0]})",
        "cli.py lines": lines.get(src / "cli.py"),
        "signatures over 8 parameters": len([w for w in wide if w[0] > 8]),
        "widest signature": f"{wide[0][1]} ({wide[0][0]})",
        "functions over 60 lines": len([f for _, f in funcs
                                        if f.end_lineno - f.lineno + 1 > 60]),
        "function-local datadistill imports": sum(_local_imports(t) for t in trees.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs="+", type=Path)
    args = parser.parse_args()
    shapes = [shape(t) for t in args.trees]
    for key in shapes[0]:
        print(f"{key:<38} " + " | ".join(str(s[key]) for s in shapes))


if __name__ == "__main__":
    main()
