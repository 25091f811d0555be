"""The Winograd tile transforms kept within a student step, on and off, in one process.

Times one matching iteration (``step_profile.build``: CIFAR-10 shapes, ConvNet-3 width 128,
DSA on, one torch thread, CPU time) of each kind asked for, with the kept transforms as
shipped ("kept") and without them ("recomputed": every kernel transforms its maps itself, and
the double backward's two terms in the adjoint lx each transform it). The cells run in turn,
the order reversed every round, so that a busy host slows them alike; both forms give the
same bits (``tests/test_winograd.py``). Also prints, per form, the adjoint / unrolled ratio
where both students of one IPC are asked for.

    python benchmarks/kept_tiles.py --kinds unrolled_10 adjoint_10 --rounds 4 \
        --out benchmarks/results/kept_tiles.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))


@contextlib.contextmanager
def recomputed():
    """Within the block no transform is kept: the step scopes keep nothing, and the double
    backward's fused call runs as its two separate kernels."""
    from datadistill.matching import adjoint_steps, student
    from datadistill.models import winograd

    fused = winograd.conv_sum_weight_grad

    @contextlib.contextmanager
    def nothing_kept(*roles):
        with winograd.kept_tiles() as scope:
            yield scope

    def separate(x1, w1, x2, w2, dy):
        out = winograd.conv_sum(x1, w1, x2, w2)
        return out, None if dy is None else winograd.conv_weight_grad(dy, x1)

    saved = student.kept_tiles, adjoint_steps.kept_tiles
    student.kept_tiles = adjoint_steps.kept_tiles = nothing_kept
    winograd.conv_sum_weight_grad = separate
    try:
        yield
    finally:
        student.kept_tiles, adjoint_steps.kept_tiles = saved
        winograd.conv_sum_weight_grad = fused


def main(argv: list[str] | None = None) -> int:
    import step_profile

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kinds", nargs="+", default=["unrolled_10", "adjoint_10"],
                   choices=["unrolled_1", "adjoint_1", "unrolled_10", "adjoint_10"])
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    steps = {kind: step_profile.build(kind, 128) for kind in args.kinds}
    cells = [(kind, form) for kind in args.kinds for form in ("recomputed", "kept")]

    def run(kind: str, form: str) -> float:
        with recomputed() if form == "recomputed" else contextlib.nullcontext():
            t0 = time.process_time()
            steps[kind]()
            return time.process_time() - t0

    for cell in cells:  # warm-up
        run(*cell)
    times: dict[tuple[str, str], list[float]] = {cell: [] for cell in cells}
    for r in range(args.rounds):
        for cell in cells if r % 2 == 0 else cells[::-1]:
            times[cell].append(run(*cell))
    med = {cell: statistics.median(t) for cell, t in times.items()}
    print(f"CPU seconds per iteration ({args.rounds} rounds, {step_profile._cpu()})")
    print("| step | recomputed | kept | kept / recomputed |\n|---|---|---|---|")
    for kind in args.kinds:
        print(f"| {kind} | {med[(kind, 'recomputed')]:.3f} | {med[(kind, 'kept')]:.3f} "
              f"| {med[(kind, 'kept')] / med[(kind, 'recomputed')]:.3f} |")
    ratios = {}
    for ipc in ("1", "10"):
        if f"unrolled_{ipc}" in steps and f"adjoint_{ipc}" in steps:
            for form in ("recomputed", "kept"):
                ratios[f"ipc{ipc}_{form}"] = (med[(f"adjoint_{ipc}", form)]
                                              / med[(f"unrolled_{ipc}", form)])
                print(f"adjoint / unrolled, IPC {ipc}, {form}: "
                      f"{ratios[f'ipc{ipc}_{form}']:.3f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        rows = [{"kind": k, "form": f, "cpu_s": times[(k, f)], "median_s": med[(k, f)]}
                for k, f in cells]
        args.out.write_text(json.dumps({"rounds": args.rounds, "cpu": step_profile._cpu(),
                                        "rows": rows, "adjoint_over_unrolled": ratios},
                                       indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
