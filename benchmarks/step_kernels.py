"""Wall-clock time of each student kernel inside one real matching iteration.

``step_profile.py`` splits a step by the profiler's aten ops; this script times the package's
own kernels as they are called inside one iteration (``step_profile.build``: CIFAR-10 shapes,
ConvNet-3 width 128, DSA on, one torch thread), without a profiler: the three Winograd
kernels per map size, the first layer's C loops (``image_conv``) or, where they do not
apply, the images' input gradient and the native (oneDNN) convolution backward, and the norm
block's forward, backward and double backward passes. The kernels' sum against the
iteration's time leaves the rest (the linear layer, DSA, the norm's per-instance
coefficients, autograd, Python).

Kernel times measured inside a step differ from the same kernels timed alone
(``benchmarks/winograd.py``): caches hold the step's other maps, not this kernel's.

    python benchmarks/step_kernels.py --kind unrolled_1
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

_KERNELS = (("winograd", ("conv", "conv_sum", "conv_sum_weight_grad", "conv_input_grad",
                          "conv_weight_grad")),
            ("convnet_ops", ("_few_channel_input_grad", "_conv_backward")),
            ("image_conv", ("conv", "input_grad", "weight_grad")),
            ("norm_passes", ("forward", "grad", "double_backward")))


def _timed(module, name: str, totals: dict, counts: collections.Counter) -> None:
    """Replace ``module.name`` by a wrapper that adds its wall clock to ``totals`` under
    (module, name, shape of the first 4-D argument or of a ``Maps`` argument's input map, else
    of the first tensor argument)."""
    fn = getattr(module, name)

    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        dt = time.perf_counter() - t0
        maps = [getattr(a, "z", a) for a in args]  # norm_passes take a Maps (its z)
        tensors = [a for a in maps if isinstance(a, torch.Tensor)]
        shape = next((tuple(a.shape) for a in tensors if a.dim() == 4),
                     tuple(tensors[0].shape) if tensors else None)
        key = (module.__name__.rsplit(".", 1)[-1], name, shape)
        totals[key] += dt
        counts[key] += 1
        return out

    setattr(module, name, wrapper)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kind", default="unrolled_1",
                   help="unrolled_1 | adjoint_1 | unrolled_10 | adjoint_10 | official_1 ...")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    import step_profile
    from datadistill.models import convnet_ops, image_conv, norm_passes, winograd

    modules = {"winograd": winograd, "convnet_ops": convnet_ops, "norm_passes": norm_passes,
               "image_conv": image_conv}
    totals: dict = collections.defaultdict(float)
    counts: collections.Counter = collections.Counter()
    for mod, names in _KERNELS:
        for name in names:
            _timed(modules[mod], name, totals, counts)
    step = step_profile.build(args.kind, 128)
    step()  # warm-up: builds the C libraries, fills the allocator's heap
    totals.clear()
    counts.clear()
    t0 = time.perf_counter()
    step()
    total = time.perf_counter() - t0
    print(f"{args.kind}: {total:.3f} s, CPU: {step_profile._cpu()}")
    print("| kernel | input shape | calls | s | ms per call |")
    print("|---|---|---|---|---|")
    for key in sorted(totals, key=lambda k: -totals[k]):
        mod, name, shape = key
        print(f"| {mod}.{name} | {shape} | {counts[key]} | {totals[key]:.3f} | "
              f"{1e3 * totals[key] / counts[key]:.2f} |")
    covered = sum(totals.values())
    print(f"| the kernels | | | {covered:.3f} | |")
    print(f"| the rest (linear layer, DSA, norm coefficients, autograd, Python) | | | "
          f"{total - covered:.3f} | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
