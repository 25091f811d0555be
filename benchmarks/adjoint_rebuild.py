"""The adjoint mode's graph-only rebuild on and off, against the unrolled student, in one process.

Times one matching iteration (``step_profile.build``: CIFAR-10 shapes, ConvNet-3 width 128,
DSA on, one torch thread, CPU time) of the unrolled student and of the adjoint student with
the rebuilt steps' weight-gradient kernels skipped ("on": the forward pass records g_i, the
backward pass rebuilds each step as a graph only) and computed ("off": ``Trajectory.grad``
returns nothing, so every step is rebuilt with its values, as before that change). The three
run in turn, the order reversed every round, so that a busy host slows them alike; the
gradients of "on" and "off" are bitwise the same (``tests/test_adjoint.py``).

    python benchmarks/adjoint_rebuild.py --ipc 10 --rounds 3 \
        --out benchmarks/results/adjoint_rebuild.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))


def main(argv: list[str] | None = None) -> int:
    import step_profile
    from datadistill.matching import adjoint

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ipc", type=int, default=10, choices=[1, 10])
    p.add_argument("--rounds", type=int, default=3, help="timed rounds (each runs all three)")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    recorded = adjoint.Trajectory.grad
    steps = {"unrolled": step_profile.build(f"unrolled_{args.ipc}", 128),
             "adjoint": step_profile.build(f"adjoint_{args.ipc}", 128)}
    cells = [("unrolled", True), ("adjoint", True), ("adjoint", False)]

    def run(mode: str, on: bool) -> float:
        adjoint.Trajectory.grad = recorded if on else (lambda self, i: None)
        try:
            t0 = time.process_time()
            steps[mode]()
            return time.process_time() - t0
        finally:
            adjoint.Trajectory.grad = recorded

    for cell in cells:  # warm-up
        run(*cell)
    times: dict[tuple[str, bool], list[float]] = {cell: [] for cell in cells}
    for r in range(args.rounds):
        for cell in cells if r % 2 == 0 else cells[::-1]:
            times[cell].append(run(*cell))
    base = statistics.median(times[("unrolled", True)])
    rows = [{"mode": mode, "graph_only_rebuild": on if mode == "adjoint" else None,
             "cpu_s": times[(mode, on)], "median_s": statistics.median(times[(mode, on)]),
             "vs_unrolled": statistics.median(times[(mode, on)]) / base}
            for mode, on in cells]
    print(f"IPC {args.ipc}, CPU seconds per iteration ({args.rounds} rounds)")
    print("| student | rebuild | each round | median | / unrolled |\n|---|---|---|---|---|")
    for row in rows:
        how = {None: "-", True: "graph only", False: "with values"}[row["graph_only_rebuild"]]
        each = ", ".join(f"{t:.2f}" for t in row["cpu_s"])
        print(f"| {row['mode']} | {how} | {each} | {row['median_s']:.3f} "
              f"| {row['vs_unrolled']:.3f} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"ipc": args.ipc, "rounds": args.rounds,
                                        "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
