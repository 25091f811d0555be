"""The student's Winograd F(4x4, 3x3) kernels against PyTorch's native (oneDNN) convolution.

For each CIFAR-10 shape of the ConvNet-3 student (128 channels; 16x16 and 8x8 maps; 10 and 100
images, IPC 1 and 10) and each kernel the student's double backward calls (forward, input
gradient, filter gradient), the median time of ROUNDS interleaved calls of each implementation
(one thread, channels_last, float32), their ratio, and each one's largest error against the
float64 native result relative to that result's largest magnitude. Also the first layer's
shape (3 input channels), where ``winograd.applies`` keeps the native kernel.

    python benchmarks/winograd.py [ROUNDS]      # RESULTS.md section 14.2
"""

from __future__ import annotations

import statistics
import sys
import time

import torch
import torch.nn.functional as F

import datadistill  # noqa: F401  (its allocator setting, as every other benchmark)
from datadistill.models import winograd

_BWD = torch.ops.aten.convolution_backward.default
_ARGS = (None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1)
CL = torch.channels_last


def _native(kind, x, w, dy):
    if kind == "forward":
        return F.conv2d(x, w, None, 1, 1)
    if kind == "input grad":
        return _BWD(dy, x, w, *_ARGS, [True, False, False])[0]
    return _BWD(dy, x, w, *_ARGS, [False, True, False])[1]


def _winograd(kind, x, w, dy):
    if kind == "forward":
        return winograd.conv(x, w)
    if kind == "input grad":
        return winograd.conv_input_grad(dy, w)
    return winograd.conv_weight_grad(dy, x)


def _time(fn, rounds: int, *args) -> list[float]:
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn(*args)
        out.append(time.perf_counter() - t0)
    return out


def main(rounds: int = 30) -> None:
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    print("| images | map | Cin -> Cout | kernel | native ms | Winograd ms | native / Winograd "
          "| native error | Winograd error | Winograd used by the student |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n, size, cin, cout in [(10, 16, 128, 128), (10, 8, 128, 128), (100, 16, 128, 128),
                               (100, 8, 128, 128), (10, 32, 3, 128)]:
        x = torch.randn(n, cin, size, size, generator=gen).contiguous(memory_format=CL)
        w = torch.randn(cout, cin, 3, 3, generator=gen) * (2 / (9 * cin)) ** 0.5
        dy = torch.randn(n, cout, size, size, generator=gen).contiguous(memory_format=CL)
        w_cl = w.contiguous(memory_format=CL)  # as the student's plan passes it to oneDNN
        for kind in ("forward", "input grad", "filter grad"):
            ref = _native(kind, x.double(), w.double(), dy.double())
            scale = ref.abs().max().item()
            err_n = (_native(kind, x, w_cl, dy).double() - ref).abs().max().item() / scale
            err_w = (_winograd(kind, x, w_cl, dy).double() - ref).abs().max().item() / scale
            native, wino = [], []
            for _ in range(3):  # interleaved blocks: a busy machine slows both alike
                native += _time(_native, rounds // 3, kind, x, w_cl, dy)
                wino += _time(_winograd, rounds // 3, kind, x, w_cl, dy)
            tn, tw = statistics.median(native) * 1e3, statistics.median(wino) * 1e3
            used = winograd.applies(x, w, 1)
            print(f"| {n} | {size}x{size} | {cin} -> {cout} | {kind} | {tn:.2f} | {tw:.2f} | "
                  f"{tn / tw:.2f}x | {err_n:.1e} | {err_w:.1e} | {'yes' if used else 'no'} |",
                  flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 30)
