"""Where one ConvNet-3 step spends its time, beside the CPU's single-thread matmul peak.

Prints, for the machine it runs on (one torch thread):

- the fp32 matmul peak: GFLOP/s of a 1024 x 1024 x 1024 ``torch.mm`` (best and median of 20);
- for each step kind, its FLOPs (counted from the shapes by ``torch.utils.flop_counter``:
  convolutions, their backward and double backward, the linear layer; a convolution the
  student runs as Winograd F(4x4, 3x3) counts as the direct convolution it computes, so
  GFLOP/s is the rate of the direct algorithm's work: Winograd does 1/4 of its multiply-adds
  in its products, plus the transforms), its time (median of ``--iterations`` after the
  warm-up calls, ``--warmup``; the kinds are timed in turn, interleaved) and GFLOP/s as a
  fraction of the matmul peak;
- a profile of one more step (``torch.profiler``, self CPU time of every aten op) split into
  parts: convolutions (forward, backward, double backward, native or Winograd: every op under
  a Winograd kernel counts as convolution; their GFLOP/s is the direct conv FLOPs over the
  conv time), norm (group norm kernels and the elementwise products and sums on
  activation-sized tensors of the fused norm backward), activation (ReLU and its mask),
  pooling (2x2 average pool and its backward or nearest upsampling), fills and copies, and
  the rest (linear layer, loss, DSA, optimiser and parameter-vector updates, autograd).

Step kinds (CIFAR-10 shapes: ConvNet-3 width 128, 3 x 32 x 32, 10 classes):

    train         the expert / evaluation training step: the module, batch 256, SGD with
                  momentum 0.9 and weight decay 5e-4 (cross-entropy, forward + backward)
    train_modules the same with the plain modules (``fused = False``: GroupNorm, ReLU,
                  AvgPool2d each on its own), the code path before the fused op
    unrolled_1    one unrolled matching iteration, IPC 1 (10 images), 50 student steps, DSA
    adjoint_1     the same iteration in adjoint mode (forward pass, then the rebuilt steps)
    unrolled_10   IPC 10 (100 images), 30 student steps
    adjoint_10    the same in adjoint mode
    official_1, official_10  the unrolled iteration with the official-style student
                  (``speed.FlatParamModule``: flat-vector views in the plain modules)

    python benchmarks/step_profile.py --out benchmarks/results/step_profile.json
    python benchmarks/step_profile.py --kinds train train_modules --iterations 5  # training step
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

import datadistill  # noqa: F401  (before any tensor is made: its allocator setting)

KINDS = ("train", "train_modules", "unrolled_1", "adjoint_1", "unrolled_10", "adjoint_10",
         "official_1", "official_10")
SHAPES = {1: 50, 10: 30}  # IPC -> syn_steps (MTT's CIFAR-10 settings)
PARTS = ("conv", "norm", "activation", "pooling", "fill/copy", "rest")
_CONV = {"aten::mkldnn_convolution", "aten::convolution_backward", "aten::_convolution",
         "aten::convolution", "aten::conv2d", "aten::_slow_conv2d_forward",
         "aten::_slow_conv2d_backward", "aten::thnn_conv2d"}
_ACT = {"aten::relu", "aten::relu_", "aten::clamp_min", "aten::clamp_min_",
        "aten::threshold_backward", "aten::threshold"}
_POOL = {"aten::avg_pool2d", "aten::avg_pool2d_backward", "aten::upsample_nearest2d",
         "aten::upsample_nearest2d_backward"}
_NORM = {"aten::native_group_norm", "aten::native_group_norm_backward"}
_FILL = {"aten::fill_", "aten::zero_", "aten::copy_", "aten::clone", "aten::contiguous"}
_ACTIVATION_NUMEL = 1 << 16  # elementwise ops on tensors this large are the norm's


def matmul_peak(repeats: int = 20) -> dict:
    """Best and median GFLOP/s of a 1024^3 fp32 matmul (this thread)."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    out = torch.empty(1024, 1024)
    for _ in range(3):
        torch.mm(a, b, out=out)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b, out=out)
        times.append(time.perf_counter() - t0)
    flops = 2 * 1024 ** 3
    return {"best_gflops": flops / min(times) / 1e9,
            "median_gflops": flops / statistics.median(times) / 1e9}


def _part(name: str, shapes: list) -> str:
    if name in _CONV:
        return "conv"
    if name in _ACT:
        return "activation"
    if name in _POOL:
        return "pooling"
    if name in _NORM:
        return "norm"
    if name in _FILL:
        return "fill/copy"
    first = shapes[0] if shapes and isinstance(shapes[0], list) else []
    numel = 1
    for s in first:
        numel *= s
    if len(first) == 4 and numel >= _ACTIVATION_NUMEL:
        return "norm"  # elementwise products / sums of the fused norm (and its double backward)
    return "rest"


_WINOGRAD = "datadistill::winograd"  # the range every Winograd kernel runs in while profiled
_CONV_RANGE = "datadistill::conv"  # other hand-written convolution kernels
_NORM_RANGE = "datadistill::norm"  # the norm block's compiled passes
_RANGES = {_WINOGRAD: "conv", _CONV_RANGE: "conv", _NORM_RANGE: "norm"}


def _range_part(ev) -> str | None:
    """The part of the innermost enclosing range of :data:`_RANGES`, or None."""
    while ev is not None:
        if ev.name in _RANGES:
            return _RANGES[ev.name]
        ev = ev.cpu_parent
    return None


def split_profile(prof) -> dict[str, float]:
    """Seconds of self CPU time per part."""
    parts: dict[str, float] = defaultdict(float)
    for ev in prof.events():
        sec = ev.self_cpu_time_total / 1e6
        part = _range_part(ev)
        if part is not None:
            parts[part] += sec
        elif not ev.name.startswith("aten::"):
            parts["rest"] += sec  # autograd engine, Python functions
        else:
            parts[_part(ev.name, ev.input_shapes)] += sec
    return {p: parts.get(p, 0.0) for p in PARTS}


@contextlib.contextmanager
def _kernel_ranges() -> Iterator[None]:
    """Within the block, every hand-written kernel runs inside a profiler range
    (:data:`_RANGES`): the Winograd convolutions (``conv_sum`` and ``conv_sum_weight_grad``
    too) and the first layer's C loops and input gradient count as convolution, the norm
    block's C passes as norm (their time is otherwise the self time of a Python function:
    "rest"). Only the profiled call runs with them: a range costs a dispatcher call even with
    no profiler running, which the timed calls of the official-style student, with no such
    kernels, would not pay."""
    from datadistill.models import convnet_ops, image_conv, norm_passes, winograd

    patches = [(winograd, name, _WINOGRAD)
               for name in ("conv", "conv_input_grad", "conv_weight_grad", "conv_sum",
                            "conv_sum_weight_grad")]
    patches += [(image_conv, name, _CONV_RANGE)
                for name in ("conv", "input_grad", "weight_grad")]
    patches += [(convnet_ops, "_few_channel_input_grad", _CONV_RANGE),
                (norm_passes, "run_pass", _NORM_RANGE), (norm_passes, "forward", _NORM_RANGE)]
    saved = [(module, name, getattr(module, name)) for module, name, _ in patches]
    for module, name, label in patches:
        kernel = getattr(module, name)

        def ranged(*args, _kernel=kernel, _label=label, **kwargs):
            with torch.profiler.record_function(_label):
                return _kernel(*args, **kwargs)

        setattr(module, name, ranged)
    try:
        yield
    finally:
        for module, name, kernel in saved:
            setattr(module, name, kernel)


class _FlopCount(TorchDispatchMode):
    """FLOPs of every op with a formula in ``torch.utils.flop_counter`` (convolutions and
    their backward, matmuls), from the shapes. ``FlopCounterMode`` itself is not used: its
    module hooks break ``autograd.grad`` through a module called with ``create_graph``."""

    def __init__(self) -> None:
        super().__init__()
        self.total = self.conv = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            flops = formula(*args, **kwargs, out_val=out)
            self.total += flops
            if "convolution" in str(func._overloadpacket):
                self.conv += flops
        return out


def count_flops(step) -> tuple[float, float]:
    """(total, convolution) FLOPs of one call of ``step``, from the ops' shapes, with the
    student's convolutions on the native kernels (their direct-algorithm FLOPs: Winograd and
    the first layer's C loops off); then one
    plain call, the warm-up of the kernels the timed calls use."""
    from datadistill.models import image_conv, winograd

    enabled = winograd.ENABLED, image_conv.ENABLED
    winograd.ENABLED = image_conv.ENABLED = False
    try:
        with _FlopCount() as counter:
            step()
    finally:
        winograd.ENABLED, image_conv.ENABLED = enabled
    step()
    return float(counter.total), float(counter.conv)


# ----------------------------------------------------------------------------- steps


def train_step(width: int = 128, batch: int = 256, fused: bool = True):
    from datadistill.models import create_model
    from datadistill.training import train_step as one_step

    torch.manual_seed(0)
    net = create_model("convnet", 3, 10, 32, width=width)
    net.fused = fused
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    return lambda: one_step(net, opt, F.cross_entropy, x, y)


def matching_step(mode: str, ipc: int, width: int = 128, student: str = "ours"):
    """One matching iteration (unrolled or adjoint) at the CIFAR-10 shape, DSA on."""
    from datadistill.data.augment import DSA
    from datadistill.matching import (
        StudentSteps,
        adjoint_backward,
        matching_loss,
        student_forward,
        student_trajectory,
        unroll_student,
    )
    from datadistill.models import create_model, flatten_params

    torch.manual_seed(0)
    model = create_model("convnet", 3, 10, 32, width=width)
    if student == "ours":
        forward = student_forward(model)
    else:
        sys.path.insert(0, str(Path(__file__).parent))
        from speed import FlatParamModule

        forward = FlatParamModule(model)
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(10 * ipc, 3, 32, 32, generator=gen).requires_grad_()
    labels = torch.arange(10).repeat_interleave(ipc)
    syn_lr = torch.tensor(0.01, requires_grad=True)
    theta0 = flatten_params(model)
    target = theta0 + 0.01 * torch.randn(theta0.numel(), generator=gen)
    steps = StudentSteps(SHAPES[ipc], dsa=DSA())

    def unrolled() -> None:
        theta_n = unroll_student(forward, theta0, images, labels, syn_lr, steps, generator=gen)
        loss = matching_loss(theta_n, theta0, target)
        torch.autograd.grad(loss, [images, syn_lr])

    def adjoint() -> None:
        with student_trajectory(forward, theta0, images, labels, syn_lr, steps,
                                generator=gen) as traj:
            theta_n = traj.final.requires_grad_()
            loss = matching_loss(theta_n, theta0, target)
            (lam,) = torch.autograd.grad(loss, theta_n)
            adjoint_backward(forward, traj, images, labels, syn_lr, lam)

    return unrolled if mode == "unrolled" else adjoint


def build(kind: str, width: int):
    if kind.startswith("train"):
        return train_step(width, fused=kind == "train")
    mode, ipc = kind.split("_")
    if mode == "official":
        return matching_step("unrolled", int(ipc), width, student="official")
    return matching_step(mode, int(ipc), width)


def interleaved(cells: list, run, rounds: int) -> dict:
    """{cell: [``run(*cell)`` of each round]}: one warm-up call per cell, then ``rounds``
    rounds that call every cell once, the order reversed every other round, so that a host
    whose speed drifts slows them alike (the benchmarks that compare forms in one process)."""
    for cell in cells:
        run(*cell)
    times: dict = {cell: [] for cell in cells}
    for r in range(rounds):
        for cell in cells if r % 2 == 0 else cells[::-1]:
            times[cell].append(run(*cell))
    return times


def measure(steps: dict, iterations: int, peak: float, warmup: int = 1) -> list[dict]:
    """Every kind's FLOPs (also its warm-up), ``warmup`` untimed rounds (the first calls of a
    kind grow the process's heap and fault its pages in: 1.4-1.6x the steady time), then
    ``iterations`` rounds that time each kind once in turn (interleaved: a busy machine slows
    all kinds alike), then one profiled call each."""
    flops = {kind: count_flops(step) for kind, step in steps.items()}
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {kind: [] for kind in steps}
    for _ in range(iterations):
        for kind, step in steps.items():
            t0 = time.perf_counter()
            step()
            times[kind].append(time.perf_counter() - t0)
    rows = []
    for kind, step in steps.items():
        with _kernel_ranges(), profile(activities=[ProfilerActivity.CPU],
                                       record_shapes=True) as prof:
            step()
        parts = split_profile(prof)
        total, conv = flops[kind]
        sec = statistics.median(times[kind])
        rows.append({"kind": kind, "gflop": total / 1e9, "conv_gflop": conv / 1e9, "sec": sec,
                     "times": times[kind], "gflops": total / sec / 1e9,
                     "of_peak": total / sec / 1e9 / peak, "parts_sec": parts,
                     "conv_gflops": conv / 1e9 / parts["conv"] if parts["conv"] else 0.0})
        print(f"# {kind}: {sec:.3f} s", file=sys.stderr, flush=True)
    return rows


def report(peak: dict, rows: list[dict]) -> str:
    lines = [f"matmul 1024^3 fp32, 1 thread: best {peak['best_gflops']:.1f} GFLOP/s, "
             f"median {peak['median_gflops']:.1f} (fractions below are of the median)", "",
             "| step | GFLOP | s (median) | GFLOP/s | of peak | conv GFLOP/s | "
             + " | ".join(f"{p} %" for p in PARTS) + " |",
             "|---|---|---|---|---|---|" + "---|" * len(PARTS)]
    for r in rows:
        prof_total = sum(r["parts_sec"].values()) or 1.0
        shares = " | ".join(f"{100 * r['parts_sec'][p] / prof_total:.0f}" for p in PARTS)
        lines.append(f"| {r['kind']} | {r['gflop']:.1f} | {r['sec']:.3f} | {r['gflops']:.1f} | "
                     f"{100 * r['of_peak']:.0f} % | {r['conv_gflops']:.1f} | {shares} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kinds", nargs="*", default=list(KINDS[:6]), choices=KINDS)
    p.add_argument("--iterations", type=int, default=2, help="timed calls per kind")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed rounds of every kind before the timed ones")
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--out", default=None, help="JSON file for the raw figures")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    peak = matmul_peak()
    rows = measure({kind: build(kind, args.width) for kind in args.kinds}, args.iterations,
                   peak["median_gflops"], args.warmup)
    peak_after = matmul_peak()
    print(report(peak, rows))
    print(f"\nmatmul again after the steps: best {peak_after['best_gflops']:.1f}, "
          f"median {peak_after['median_gflops']:.1f} GFLOP/s; CPU: {_cpu()}")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"peak": peak, "peak_after": peak_after, "rows": rows,
                                   "cpu": _cpu(), "torch": torch.__version__,
                                   "argv": sys.argv[1:]}, indent=2) + "\n")
    return 0


def _cpu() -> str:
    from datadistill.report.page import _cpu_model

    return _cpu_model()


if __name__ == "__main__":
    raise SystemExit(main())
