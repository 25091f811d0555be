"""The adjoint mode's graph-only rebuild on and off, against the unrolled student, in one process.

Times one matching iteration (``step_profile.build``: CIFAR-10 shapes, ConvNet-3 width 128,
DSA on, one torch thread, CPU time) of the unrolled student and of the adjoint student in
three forms:

- "graph only + norm values" (as shipped): the forward pass records g_i and the norm blocks'
  values (``convnet_ops.NormValues``), the backward pass rebuilds each step as a graph only,
  its convolutions without their weight-gradient kernels and its norm blocks without their
  statistics and sums passes;
- "graph only": the same without the recorded norm values (``convnet_ops._record`` off);
- "with values": nothing recorded (``Trajectory.grad`` returns nothing), every step rebuilt
  with its values, as before either change.

The forms asked for (``--forms``, all three by default) and the unrolled student run in
turn, the order reversed every round, so that a busy host slows them alike;
the three adjoint forms' gradients are bitwise the same (``tests/test_adjoint.py``).
Besides the ratio of the medians, each round's ratio to the unrolled time of the same round
(its pair, run next to it) and their median: on a host whose speed drifts over minutes the
pairs' ratios move less than the medians' ratio.

    python benchmarks/adjoint_rebuild.py --ipc 10 --rounds 3 \
        --out benchmarks/results/adjoint_rebuild.json
    python benchmarks/adjoint_rebuild.py --ipc 10 --rounds 6 --forms "graph only + norm values"
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
    from datadistill.models import convnet_ops

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ipc", type=int, default=10, choices=[1, 10])
    p.add_argument("--rounds", type=int, default=3, help="timed rounds (each runs all three)")
    p.add_argument("--forms", nargs="+", default=["graph only + norm values", "graph only",
                                                  "with values"],
                   choices=["graph only + norm values", "graph only", "with values"],
                   help="the adjoint forms to time beside the unrolled student")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    recorded, record = adjoint.Trajectory.grad, convnet_ops._record
    steps = {"unrolled": step_profile.build(f"unrolled_{args.ipc}", 128),
             "adjoint": step_profile.build(f"adjoint_{args.ipc}", 128)}
    forms = {"-": (True, True), "graph only + norm values": (True, True),
             "graph only": (True, False), "with values": (False, False)}
    cells = [("unrolled", "-")] + [("adjoint", form) for form in args.forms]

    def run(mode: str, form: str) -> float:
        grads, norms = forms[form]
        adjoint.Trajectory.grad = recorded if grads else (lambda self, i: None)
        convnet_ops._record = record if norms else (lambda *a: None)
        try:
            t0 = time.process_time()
            steps[mode]()
            return time.process_time() - t0
        finally:
            adjoint.Trajectory.grad, convnet_ops._record = recorded, record

    times = step_profile.interleaved(cells, run, args.rounds)
    base = statistics.median(times[("unrolled", "-")])
    unrolled = times[("unrolled", "-")]
    rows = [{"mode": mode, "rebuild": form, "cpu_s": times[(mode, form)],
             "median_s": statistics.median(times[(mode, form)]),
             "vs_unrolled": statistics.median(times[(mode, form)]) / base,
             "per_round": [t / u for t, u in zip(times[(mode, form)], unrolled, strict=True)]}
            for mode, form in cells]
    print(f"IPC {args.ipc}, CPU seconds per iteration ({args.rounds} rounds)")
    print("| student | rebuild | each round | median | / unrolled | / unrolled per round "
          "(median) |\n|---|---|---|---|---|---|")
    for row in rows:
        each = ", ".join(f"{t:.2f}" for t in row["cpu_s"])
        pairs = ", ".join(f"{r:.3f}" for r in row["per_round"])
        print(f"| {row['mode']} | {row['rebuild']} | {each} | {row['median_s']:.3f} "
              f"| {row['vs_unrolled']:.3f} | {pairs} ({statistics.median(row['per_round']):.3f}) |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"ipc": args.ipc, "rounds": args.rounds,
                                        "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
