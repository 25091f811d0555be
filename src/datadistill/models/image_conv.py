"""The student's first convolution, on the image batch, as compiled C loops (``image_conv.c``).

A 3x3 convolution of a map with 1 to 4 channels into many (3 -> 128 on CIFAR-10) is, per
output pixel, a product with an inner dimension of 9 Cin = 27: too short for the BLAS
library's blocking. At CIFAR-10's first layer the matmul + ``F.fold`` form of the input
gradient ran at about 40 GFLOP/s on a CPU whose single-thread matmul reaches about 95, and
inside an unrolled matching iteration oneDNN's forward and weight gradient ran well below
their rate alone (``benchmarks/RESULTS.md``, section 14.8). The C loops keep a block of
pixels and output channels (or of pixels and taps) in vector registers for the whole sum,
one multiply-add per term.

Serves :mod:`.convnet_ops` where :func:`applies`: on the CPU, one torch thread, no graph being
recorded (the loops write through raw pointers), float32 / float64, a 3x3 filter with padding
1, at most :data:`MAX_CHANNELS` input channels, output channels a multiple of 16, both map
sides at least :data:`MIN_SIZE` (smaller maps keep the native kernels: the embedded digits'
8x8 student, whose figures stay bitwise as they were), channels_last maps, and a compiled
library at hand (:mod:`datadistill.runtime.ckernels`); ``DATADISTILL_IMAGE_CONV=0`` in the
environment turns them off. Elsewhere the native kernels run. The
results equal the direct convolution's up to float rounding (float64 tests: 1e-12); each
sum's order is fixed and does not depend on the register blocks, so builds with and without
AVX-512 give the same bits.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from datadistill.models.winograd import _nhwc  # the (N, H, W, C) view of a channels_last map
from datadistill.runtime import ckernels

__all__ = ["ENABLED", "MAX_CHANNELS", "MIN_SIZE", "applies", "conv", "input_grad",
           "weight_grad"]

ENABLED = os.environ.get("DATADISTILL_IMAGE_CONV", "1") != "0"
MAX_CHANNELS = 4  # the images: grey, RGB, RGBA
MIN_SIZE = 16     # both sides; below it the native kernels stay (see the module docstring)
_LANES_BYTES = 64  # output channels a multiple of 64 bytes: a whole vector in every build
_PAIR_BYTES = 128  # the input gradient's taps come in pairs of vectors: 2 x 64 bytes covers
                   # every build

_SOURCE = str(Path(__file__).with_name("image_conv.c"))
_MAP_ARGS = (ctypes.c_void_p,) * 3 + (ctypes.c_long,) * 5
_ARGS = {"ic_forward": _MAP_ARGS, "ic_weight_grad": _MAP_ARGS,
         "ic_input_grad": (ctypes.c_void_p,) * 5 + (ctypes.c_long,) * 6}


def _kernel(name: str, dtype: torch.dtype):
    return ckernels.function(_SOURCE, name, dtype == torch.float64, _ARGS[name])


def applies(x: torch.Tensor, w: torch.Tensor, pad: int, *maps: torch.Tensor) -> bool:
    """Whether the C loops compute conv2d(x, w, padding=pad) and its gradients (module
    docstring); ``maps``: the other maps the call reads (the output gradient)."""
    if not (ENABLED and pad == 1 and x.device.type == "cpu" and x.dim() == 4 and w.dim() == 4
            and tuple(w.shape[2:]) == (3, 3) and x.dtype in (torch.float32, torch.float64)
            and w.dtype == x.dtype and 1 <= x.shape[1] <= MAX_CHANNELS
            and w.shape[0] % (_LANES_BYTES // x.element_size()) == 0
            and min(x.shape[2:]) >= MIN_SIZE and torch.get_num_threads() == 1):
        return False
    tensors = (x, w, *maps)
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False  # autograd must see the computation
    if not all(t.dtype == x.dtype and t.is_contiguous(memory_format=torch.channels_last)
               for t in (x, *maps)):
        return False
    return _kernel("ic_forward", x.dtype) is not None


def _padded(x: torch.Tensor) -> torch.Tensor:
    """(N, H + 2, W + 2, C): x's pixels with a zero border, dense."""
    return F.pad(_nhwc(x), (0, 0, 1, 1, 1, 1)).contiguous()


def _taps(w: torch.Tensor) -> torch.Tensor:
    """(9 Cin, Cout): row (ky * 3 + kx) * Cin + ci holds w[:, ci, ky, kx]."""
    return w.permute(2, 3, 1, 0).reshape(9 * w.shape[1], w.shape[0]).contiguous()


def conv(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """conv2d(x, w, padding=1) for channels_last x (N, Cin, H, W), w (Cout, Cin, 3, 3): the
    result is channels_last (its own storage, not a view)."""
    n, c, h, wd = x.shape
    co = w.shape[0]
    y = torch.empty((n, co, h, wd), dtype=x.dtype, memory_format=torch.channels_last)
    xp, wk = _padded(x), _taps(w)
    _kernel("ic_forward", x.dtype)(xp.data_ptr(), wk.data_ptr(), y.data_ptr(), n, h, wd, c, co)
    return y


def weight_grad(dy: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """dL/dw (Cout, Cin, 3, 3) of conv2d(x, w, padding=1) for dL/dy = dy, both channels_last."""
    n, c, h, wd = x.shape
    co = dy.shape[1]
    dwk = torch.empty((9 * c, co), dtype=x.dtype)
    xp, d = _padded(x), _nhwc(dy)
    _kernel("ic_weight_grad", x.dtype)(xp.data_ptr(), d.data_ptr(), dwk.data_ptr(),
                                       n, h, wd, c, co)
    return dwk.view(3, 3, c, co).permute(3, 2, 0, 1).contiguous()


def input_grad(dy: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """dL/dx (N, Cin, H, W), channels_last, of conv2d(x, w, padding=1) for dL/dy = dy
    (channels_last)."""
    n, co, h, wd = dy.shape
    c = w.shape[1]
    pair = _PAIR_BYTES // dy.element_size()  # two vectors of taps in every build
    tp = -(-9 * c // pair) * pair
    wt = torch.zeros((co, tp), dtype=dy.dtype)
    wt[:, :9 * c] = _taps(w).t()
    dx = torch.empty((n, c, h, wd), dtype=dy.dtype, memory_format=torch.channels_last)
    pad = torch.empty((h + 2) * (wd + 2) * c, dtype=dy.dtype)
    cols = torch.empty(wd * tp, dtype=dy.dtype)
    _kernel("ic_input_grad", dy.dtype)(_nhwc(dy).data_ptr(), wt.data_ptr(), dx.data_ptr(),
                                       pad.data_ptr(), cols.data_ptr(), n, h, wd, c, co, tp)
    return dx
