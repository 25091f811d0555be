"""The parts of a Winograd convolution, alone and inside one matching iteration.

Alone: the input tiles, output tiles, output-gradient tiles, filter transform and the 36 tile
products at 10 and 100 images x 128 channels, 16x16 and 8x8 (best of 7 runs of 300 calls),
and the products that make the filter's transform themselves (``filter_products``, what the
convolutions run: its time replaces the two before it).
Inside: the same functions wrapped with timers during one unrolled IPC 1 iteration
(``step_profile.build``; the output transform runs inside ``_winograd`` and is not split
out there). One torch thread.

    python benchmarks/winograd_parts.py
    PYTHONPATH=<other tree>/src python benchmarks/winograd_parts.py   # another tree's code

Run the two trees in turn to compare: kernel times inside a step depend on what the step's
other maps left in the caches, and the host's speed drifts.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))


def _best_ms(fn, calls: int = 300, runs: int = 7) -> float:
    for _ in range(10):
        fn()
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t0) / calls)
    return best * 1e3


def _row(winograd, n: int, h: int) -> tuple[float, ...]:
    x = torch.randn(n, 128, h, h).contiguous(memory_format=torch.channels_last)
    w = torch.randn(128, 128, 3, 3)
    th, tw = winograd._tiles(h, h)
    u = winograd._filter(w, False)
    v = winograd._input_tiles(x).view(36, n * th * tw, 128)
    m = winograd._products(v, u)
    y = torch.empty(n, h, h, 128)
    at = winograd._mats(torch.float32)[4]
    out_tiles = winograd._native("output_tiles", x)
    if out_tiles is None:
        raise SystemExit("no C kernels here (no compiler, or DATADISTILL_C_KERNELS=0)")
    return (_best_ms(lambda: winograd._input_tiles(x)),
            _best_ms(lambda: out_tiles(m.data_ptr(), y.data_ptr(), n, h, h, 128)),
            _best_ms(lambda: winograd._grad_tiles(x, th, tw, at)),
            _best_ms(lambda: winograd._filter(w, False)),
            _best_ms(lambda: winograd._products(v, u)),
            _best_ms(lambda: winograd._Factor(w, False, False).products(v, None)))


def alone(winograd) -> None:
    print("| images | map | input tiles ms | output tiles ms | gradient tiles ms | filter ms "
          "| products ms | filter + products in one kernel ms |")
    print("|---|---|---|---|---|---|---|---|")
    for n, h in ((10, 16), (10, 8), (100, 16)):
        row = _row(winograd, n, h)
        print(f"| {n} | {h}x{h} | " + " | ".join(f"{t:.3f}" for t in row) + " |")


def inside(winograd) -> None:
    import step_kernels
    import step_profile

    totals: dict = collections.defaultdict(float)
    counts: collections.Counter = collections.Counter()
    for name in ("_filter", "_input_tiles", "_products", "_grad_tiles"):
        step_kernels._timed(winograd, name, totals, counts)
    step = step_profile.build("unrolled_1", 128)
    step()
    totals.clear()
    counts.clear()
    t0 = time.perf_counter()
    step()
    print(f"\nunrolled_1 iteration: {time.perf_counter() - t0:.3f} s")
    print("| part | first argument | calls | s | ms per call |")
    print("|---|---|---|---|---|")
    for key in sorted(totals, key=lambda k: -totals[k]):
        _, name, shape = key
        print(f"| {name} | {shape} | {counts[key]} | {totals[key]:.3f} | "
              f"{1e3 * totals[key] / counts[key]:.3f} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--skip-inside", action="store_true", help="only the kernels alone")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    from datadistill.models import winograd

    print(f"datadistill from {Path(winograd.__file__).parents[2]}")
    alone(winograd)
    if not args.skip_inside:
        inside(winograd)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
