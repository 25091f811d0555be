"""The student's first convolution (on the images): the C loops of ``image_conv`` against the
native kernels they replace, alone and inside one unrolled matching iteration.

Prints, one torch thread:

- alone, at CIFAR-10's first layer (3 -> 128 channels, 32 x 32, 10 and 100 images): the
  forward (oneDNN ``conv2d`` vs ``image_conv.conv``), the weight gradient (oneDNN's
  ``convolution_backward`` vs ``image_conv.weight_grad``) and the input gradient (the batched
  matmul + ``F.fold`` of ``convnet_ops._few_channel_input_grad`` vs ``image_conv.input_grad``),
  best of 5 x 50 calls, with GFLOP/s (2 x 27 x 128 multiply-adds per pixel);
- inside ``step_profile.build("unrolled_1")``: the CPU seconds of the iteration and of its
  first-layer calls (``convnet_ops._conv`` and ``_conv_grads`` on 3-channel maps), the C
  loops on and off in alternating iterations (``--rounds`` of each).

    python benchmarks/image_conv.py --rounds 6 --out benchmarks/results/image_conv.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F

import datadistill  # noqa: F401  (its allocator settings, before any tensor)
from datadistill.models import convnet_ops, image_conv

sys.path.insert(0, str(Path(__file__).parent))
from step_profile import _cpu  # noqa: E402
from winograd_parts import _best_ms  # noqa: E402

CL = torch.channels_last
_ARGS = (None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1)
_backward = torch.ops.aten.convolution_backward.default


def alone(n: int) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, 32, 32, generator=g).contiguous(memory_format=CL)
    w = torch.randn(128, 3, 3, 3, generator=g)
    dy = torch.randn(n, 128, 32, 32, generator=g).contiguous(memory_format=CL)
    gflop = 2 * 27 * 128 * n * 32 * 32 / 1e9
    pairs = {
        "forward": (lambda: F.conv2d(x, w, None, 1, 1), lambda: image_conv.conv(x, w)),
        "weight grad": (lambda: _backward(dy, x, w, *_ARGS, [False, True, False]),
                        lambda: image_conv.weight_grad(dy, x)),
        "input grad": (lambda: convnet_ops._few_channel_input_grad(dy, w, x),
                       lambda: image_conv.input_grad(dy, w)),
    }
    rows = []
    for name, (native, ours) in pairs.items():
        a, b = _best_ms(native, calls=50, runs=5), _best_ms(ours, calls=50, runs=5)
        rows.append({"images": n, "kernel": name, "native_ms": round(a, 3), "c_ms": round(b, 3),
                     "native_gflops": round(gflop / a * 1e3, 1),
                     "c_gflops": round(gflop / b * 1e3, 1), "speedup": round(a / b, 3)})
    return rows


def in_iteration(rounds: int) -> dict:
    import step_profile

    spent: dict[str, float] = defaultdict(float)

    def timed(name: str, index: int):
        real = getattr(convnet_ops, name)

        def wrapper(*args, **kwargs):
            if args[index].shape[1] > image_conv.MAX_CHANNELS:
                return real(*args, **kwargs)
            start = time.process_time()
            try:
                return real(*args, **kwargs)
            finally:
                spent["first layer"] += time.process_time() - start

        setattr(convnet_ops, name, wrapper)

    timed("_conv", 0)
    timed("_conv_grads", 1)
    step = step_profile.build("unrolled_1", 128)
    step()
    step()
    out: dict[str, list] = {"on_iteration_s": [], "on_first_layer_s": [],
                            "off_iteration_s": [], "off_first_layer_s": []}
    for r in range(rounds):
        for on in ((True, False) if r % 2 == 0 else (False, True)):
            image_conv.ENABLED = on
            spent.clear()
            start = time.process_time()
            step()
            key = "on" if on else "off"
            out[f"{key}_iteration_s"].append(round(time.process_time() - start, 3))
            out[f"{key}_first_layer_s"].append(round(spent["first layer"], 3))
    image_conv.ENABLED = True
    for key in list(out):
        out[key.replace("_s", "_median_s")] = round(statistics.median(out[key]), 3)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=6, help="iterations of each, alternating")
    p.add_argument("--out", default=None, help="JSON file for the figures")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = alone(10) + alone(100)
    print("| images | kernel | native ms | C ms | native GFLOP/s | C GFLOP/s | native / C |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['images']} | {r['kernel']} | {r['native_ms']} | {r['c_ms']} | "
              f"{r['native_gflops']} | {r['c_gflops']} | {r['speedup']}x |")
    it = in_iteration(args.rounds)
    print(f"\nunrolled_1, {args.rounds} iterations each, alternating (CPU s):")
    for key in ("on", "off"):
        print(f"  C loops {key:3s}: iteration {it[f'{key}_iteration_s']} (median "
              f"{it[f'{key}_iteration_median_s']}), first layer {it[f'{key}_first_layer_s']} "
              f"(median {it[f'{key}_first_layer_median_s']})")
    if args.out:
        Path(args.out).write_text(json.dumps({"alone": rows, "unrolled_1": it,
                                              "cpu": _cpu()}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
