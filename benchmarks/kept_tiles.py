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

``--kernels`` times the kernels alone instead, at the shapes of CIFAR-10 IPC 10's Winograd
layers (100 images, 128 channels, 16x16 and 8x8), each pair alternating ``--rounds`` times
(wall clock, medians): a forward convolution followed by the weight gradient of its input,
with x's transform kept or made twice; and the double backward's sum of two convolutions
with the weight gradient of its adjoint lx, fused (one transform of lx) or as two calls.
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
    """Within the block no transform is kept (``winograd.KEEP_TILES`` off): the step scopes
    keep nothing, and the double backward's fused call runs as its two separate kernels."""
    from datadistill.models import winograd

    saved, winograd.KEEP_TILES = winograd.KEEP_TILES, False
    try:
        yield
    finally:
        winograd.KEEP_TILES = saved


def _forward_then_wgrad(kept: bool, x, dz, lx, w, lw) -> None:
    from datadistill.models import winograd

    with winograd.kept_tiles(winograd.FORWARD) if kept else contextlib.nullcontext():
        winograd.conv(x, w)
        winograd.conv_weight_grad(dz, x)


def _sum_and_wgrad(kept: bool, x, dz, lx, w, lw) -> None:
    from datadistill.models import winograd

    if kept:
        winograd.conv_sum_weight_grad(lx, w, x, lw, dz)
    else:
        winograd.conv_sum(lx, w, x, lw)
        winograd.conv_weight_grad(dz, lx)


def kernels(rounds: int) -> list[dict]:
    """Per-call medians (ms) of the two kernel pairs, with and without the shared transform."""

    def cl(seed: int, h: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.randn(100, 128, h, h, generator=g).contiguous(
            memory_format=torch.channels_last)

    rows = []
    for h in (16, 8):
        maps = (cl(0, h), cl(1, h), cl(2, h), torch.randn(128, 128, 3, 3),
                torch.randn(128, 128, 3, 3))  # x, dz, lx, w, lw
        for name, fn in (("conv(x) + weight grad of x", _forward_then_wgrad),
                         ("conv_sum(lx, x) + weight grad of lx", _sum_and_wgrad)):
            times: dict[bool, list[float]] = {False: [], True: []}
            for _ in range(rounds):
                for kept in (False, True):
                    t0 = time.perf_counter()
                    fn(kept, *maps)
                    times[kept].append(time.perf_counter() - t0)
            a, b = (1e3 * statistics.median(times[k]) for k in (False, True))
            rows.append({"maps": f"100x128x{h}x{h}", "kernels": name, "recomputed_ms": a,
                         "kept_ms": b, "ratio": b / a})
    print("| maps | kernels | recomputed ms | kept ms | kept / recomputed |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['maps']} | {r['kernels']} | {r['recomputed_ms']:.2f} | {r['kept_ms']:.2f} "
              f"| {r['ratio']:.3f} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    import step_profile

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kinds", nargs="+", default=["unrolled_10", "adjoint_10"],
                   choices=["unrolled_1", "adjoint_1", "unrolled_10", "adjoint_10"])
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--kernels", action="store_true", help="time the kernels alone")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.kernels:
        rows = kernels(args.rounds)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({"rounds": args.rounds, "cpu": step_profile._cpu(),
                                            "kernels": rows}, indent=2) + "\n")
        return 0
    steps = {kind: step_profile.build(kind, 128) for kind in args.kinds}
    cells = [(kind, form) for kind in args.kinds for form in ("recomputed", "kept")]

    def run(kind: str, form: str) -> float:
        with recomputed() if form == "recomputed" else contextlib.nullcontext():
            t0 = time.process_time()
            steps[kind]()
            return time.process_time() - t0

    times = step_profile.interleaved(cells, run, args.rounds)
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
