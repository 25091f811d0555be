"""FLOPs of one adjoint matching iteration at ImageNet-1K's shape, counted on the CPU.

``torch.utils.flop_counter.FlopCounterMode`` counts the matrix products and convolutions
(forward, backward and double backward) of the real loop (:func:`datadistill.tm.distill.distill`,
``grad_mode=adjoint``, one iteration, no evaluation) for ConvNetD4 at 64 px over 1,000
classes, on a random expert store and random real images (benchmarks/memory.py's helpers).
Three small cells (syn_steps s, batch b) give the FLOPs per image and student step,
f = (F(s=2, b=4) - F(s=1, b=4)) / 4, checked against F(s=1, b=8) - F(s=1, b=4) = 4 f; an
iteration of a config is then about syn_steps x batch_syn x f (the matching loss and the
optimiser steps add O(P), negligible). With DATM's soft labels the logits' share is counted
too (``--soft``). Element-wise work (DSA's grid sampling, norms, activations) is not counted.

A lower bound of one iteration's time on a GPU is these FLOPs over its peak rate; the README
gives it for an H100's 67 TFLOP/s (FP32, SXM, no tensor cores) as a bound, not a measurement.

    python benchmarks/imagenet1k_flops.py \\
        --out benchmarks/results/imagenet1k_flops.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory import Cell, _config, _real_data, write_store  # noqa: E402

CONFIGS = {  # (syn_steps, batch_syn) of the shipped imagenet1k configs (all IPCs alike)
    "imagenet1k/*_ipc{1,10,50}": (10, 100),
}


def count(steps: int, batch: int, soft: bool, store: Path) -> int:
    """Total FLOPs of one distill() iteration at (steps, batch)."""
    from datadistill.tm.distill import distill

    extra = {"label_mode": "soft", "lr_y": 10.0, "pix_init": "real"} if soft else {}
    cell = Cell("flops", "imagenet64", 1, steps, "adjoint", batch_syn=batch, micro_batch=batch,
                depth=4, iterations=1, experts=1, epochs=12, max_start_epoch=10, extra=extra)
    cfg = _config(cell, str(store))
    data = _real_data("imagenet64", 1)
    with tempfile.TemporaryDirectory() as out, FlopCounterMode(display=False) as counter:
        distill(cfg, out, data=data, progress=False)
    return int(counter.get_total_flops())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--soft", action="store_true", help="DATM's soft labels")
    p.add_argument("--out", default="benchmarks/results/imagenet1k_flops.json")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        write_store(store, Cell("flops", "imagenet64", 1, 1, "adjoint", depth=4, experts=1,
                                epochs=12, max_start_epoch=10))
        cells = {(s, b): count(s, b, args.soft, store) for s, b in ((1, 4), (2, 4), (1, 8))}
    per = (cells[(2, 4)] - cells[(1, 4)]) / 4  # FLOPs per image and student step
    check = (cells[(1, 8)] - cells[(1, 4)]) / 4
    result = {"cells": {f"steps{s}_batch{b}": f for (s, b), f in cells.items()},
              "flops_per_image_step": per, "check_from_batch": check,
              "iterations": {name: {"syn_steps": s, "batch_syn": b, "flops": s * b * per}
                             for name, (s, b) in CONFIGS.items()}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"per image and student step: {per / 1e9:.3f} GFLOP (from the batch: "
          f"{check / 1e9:.3f})")
    for name, row in result["iterations"].items():
        print(f"{name}: {row['syn_steps']} steps x {row['batch_syn']} images = "
              f"{row['flops'] / 1e12:.2f} TFLOP per iteration; at 67 TFLOP/s >= "
              f"{row['flops'] / 67e12 * 1e3:.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
