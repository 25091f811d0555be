"""The ConvNet's differentiable building blocks with fast double backward: a 3x3 convolution and
a fused instance norm -> ReLU -> 2x2 average pool, each a pair of ``torch.autograd.Function``.

Used by the module ConvNet (first order, :func:`norm_act_pool` with ``native=True``) and by the
unrolled student's flat-parameter plan (:mod:`datadistill.models.convnet_kernels`), which
differentiates them twice. This module imports no model, so both can use it.

- :class:`_Conv` (3x3, stride 1, no bias): forward conv; its backward is :class:`_ConvGrad`,
  whose own backward (the double backward) is two forward convolutions, one input-gradient
  and one weight-gradient kernel: the fast native kernels, and nothing else.
- :class:`_NormActPool` (instance norm = GroupNorm(C, C) -> ReLU -> 2x2 average pool, fused):
  its backward is :class:`_NormActPoolGrad`, with a hand-derived double backward (see that
  class) written as a handful of per-(sample, channel) coefficients and fused multiply-adds.
  On a channels_last CPU tensor the student's norm computes its own statistics
  (:func:`_instance_norm_nhwc`: faster, and exact where PyTorch's NHWC kernel cancels), and
  the backward's and double backward's full-size work runs as a few one-pass C loops
  (:mod:`.norm_passes`, where a C compiler is at hand) instead of a PyTorch op per term.

Everything is checked against ``torch.autograd.gradgradcheck`` in float64 (tests).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.autograd import Function

import datadistill.models.image_conv as image_conv
import datadistill.models.norm_passes as norm_passes
import datadistill.models.winograd as winograd
from datadistill.models.norm_passes import (
    Adjoints,
    Maps,
    Terms,
    adjoints,
    compiled_passes,
    q_coefs,
    relu_of,
    terms_from,
    z_coefs,
)

_conv_backward = torch.ops.aten.convolution_backward.default
_pool_backward = torch.ops.aten.avg_pool2d_backward.default
_relu_backward = torch.ops.aten.threshold_backward.default
_relu_backward_ = torch.ops.aten.threshold_backward.grad_input  # out= variant (in place)


def _as(t: torch.Tensor | None, fmt: torch.memory_format) -> torch.Tensor | None:
    """Incoming gradients may arrive in another layout; mixed layouts are 10x slower."""
    if t is None or t.dim() != 4:
        return t
    return t.contiguous(memory_format=fmt)


# ----------------------------------------------------------------------------- convolution


def _conv(x, w, pad: int):
    """conv2d(x, w, padding=pad): Winograd F(4x4, 3x3) where it pays (:mod:`.winograd`), the
    C loops of :mod:`.image_conv` on the images."""
    if image_conv.applies(x, w, pad):
        return image_conv.conv(x, w)
    if winograd.applies(x, w, pad):
        return winograd.conv(x, w)
    return F.conv2d(x, w, None, 1, pad)


def _conv_grads(dz, x, w, pad: int, need_x: bool, need_w: bool):
    """(dL/dx, dL/dw) of z = conv2d(x, w, padding=pad) for dL/dz = dz (None where not asked).

    Winograd kernels where they pay (both maps channels_last, see :mod:`.winograd`), the C
    loops of :mod:`.image_conv` on the images; otherwise two single-output native calls: on
    CPU (oneDNN, channels_last) they were measured faster than one call asking for both.
    """
    if image_conv.applies(x, w, pad, dz):
        return (image_conv.input_grad(dz, w) if need_x else None,
                image_conv.weight_grad(dz, x) if need_w else None)
    if winograd.applies(x, w, pad) and dz.is_contiguous(memory_format=torch.channels_last):
        return (winograd.conv_input_grad(dz, w) if need_x else None,
                winograd.conv_weight_grad(dz, x) if need_w else None)
    args = (None, [1, 1], [pad, pad], [1, 1], False, [0, 0], 1)
    if need_x and _few_input_channels(x, w, pad):
        gx = _few_channel_input_grad(dz, w, x)
    else:
        gx = _conv_backward(dz, x, w, *args, [True, False, False])[0] if need_x else None
    gw = _conv_backward(dz, x, w, *args, [False, True, False])[1] if need_w else None
    return gx, gw


def _few_input_channels(x, w, pad: int) -> bool:
    """The first layer on images (at most 4 channels, 16x16 or larger, 3x3, padding 1, CPU),
    where oneDNN's input gradient is 2-3x slower than its forward (measured at CIFAR-10's)."""
    return (x.device.type == "cpu" and x.shape[1] <= 4 and pad == 1
            and tuple(w.shape[2:]) == (3, 3) and min(x.shape[2:]) >= 16)


def _few_channel_input_grad(dz, w, x):
    """dL/dx of conv2d(x, w, padding=1) as one batched matmul, (9 Cin x Cout) @ (Cout x pixels)
    per image, and col2im (``F.fold``), which adds the nine shifted products into the padded
    input: faster than oneDNN's kernel (section 14.3 of ``benchmarks/RESULTS.md``) and than a
    27-column matmul with nine shifted sums (section 14.4). Result in x's layout."""
    n, co, h, wd = dz.shape
    c = w.shape[1]
    # rows (c, ky, kx) of the filter, as fold orders its columns; dz.flatten(2) is a view in
    # both layouts
    cols = torch.matmul(w.reshape(co, 9 * c).t(), dz.flatten(2))  # (n, 9 c, h * wd)
    out = F.fold(cols, (h, wd), 3, padding=1)  # (n, c, h, wd), contiguous
    fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) \
        else torch.contiguous_format
    return out.contiguous(memory_format=fmt)


class _Conv(Function):
    """z = conv2d(x, w, stride 1, padding pad), x (N, Cin, H, W), w (Cout, Cin, k, k).

    ``inner_dx=False`` (the student's first layer, whose input is the image batch): the inner
    gradient is taken w.r.t. theta only, so while that graph is built (grad mode on) the image
    gradient is skipped; in the outer, first-order pass (grad mode off) it is computed.
    """

    @staticmethod
    def forward(ctx, x, w, pad, fmt, inner_dx):
        ctx.save_for_backward(x, w)
        ctx.pad, ctx.fmt, ctx.inner_dx = pad, fmt, inner_dx
        return _conv(x, w, pad).contiguous(memory_format=fmt)

    @staticmethod
    def backward(ctx, dz):
        x, w = ctx.saved_tensors
        need_x, need_w = ctx.needs_input_grad[:2]
        need_x = need_x and (ctx.inner_dx or not torch.is_grad_enabled())
        dx, dw = _ConvGrad.apply(_as(dz, ctx.fmt), x, w, ctx.pad, ctx.fmt, need_x, need_w)
        return dx, dw, None, None, None


_WEIGHT_GRAD_VALUES = [True]  # see weight_grad_values


@contextlib.contextmanager
def weight_grad_values(on: bool) -> Iterator[None]:
    """Within the block, with ``on`` false, the first-order weight gradients that the
    convolutions return are zeros, and the kernels that would compute them do not run.

    For a graph whose gradient values are already known: the adjoint mode's rebuilt steps
    (:mod:`datadistill.matching.adjoint_steps`), whose g_i the forward pass computed. The graph
    is the same either way: the double backward (:class:`_ConvGrad`) reads the saved maps and
    weights, never these values, and the vector-Jacobian product of g_i is linear in g_i. The
    values of everything built inside the block that depends on a weight gradient (g_i
    itself) are then wrong and must not be read; the backward pass through the block's
    graph runs outside it and is exact. A global switch (the autograd engine may run the
    block's backward calls on its own thread for CUDA tensors)."""
    before = _WEIGHT_GRAD_VALUES[0]
    _WEIGHT_GRAD_VALUES[0] = on
    try:
        yield
    finally:
        _WEIGHT_GRAD_VALUES[0] = before


class _ConvGrad(Function):
    """(dx, dw) = backward of the convolution; linear in dz, bilinear in (dz, x) and (dz, w).

    Double backward, for adjoints (lx, lw) of (dx, dw):
        d/d dz = conv(lx, w) + conv(x, lw);  d/dx = dgrad(dz, lw);  d/dw = wgrad(lx, dz).
    """

    @staticmethod
    def forward(ctx, dz, x, w, pad, fmt, need_x, need_w):
        ctx.save_for_backward(dz, x, w)
        ctx.pad, ctx.fmt = pad, fmt
        if need_w and not _WEIGHT_GRAD_VALUES[0]:  # the graph without the values
            return _conv_grads(dz, x, w, pad, need_x, False)[0], torch.zeros_like(w)
        return _conv_grads(dz, x, w, pad, need_x, need_w)

    @staticmethod
    def backward(ctx, lx, lw):
        dz, x, w = ctx.saved_tensors
        pad, lx = ctx.pad, _as(lx, ctx.fmt)
        need_dz, need_x, need_w = ctx.needs_input_grad[:3]
        g_dz = g_x = g_w = None
        both = need_dz and lx is not None and lw is not None
        want_x, want_w = need_x and lw is not None, need_w and lx is not None
        if both and winograd.applies(lx, w, pad) and winograd.applies(x, lw, pad):
            # one output transform for both terms; lx's tiles serve the weight gradient too
            fused = want_w and dz.is_contiguous(memory_format=torch.channels_last)
            g_dz, g_w = winograd.conv_sum_weight_grad(lx, w, x, lw, dz if fused else None)
            want_w = want_w and not fused
        else:
            if need_dz and lx is not None:
                g_dz = _conv(lx, w, pad)
            if need_dz and lw is not None:
                term = _conv(x, lw, pad)
                g_dz = term if g_dz is None else g_dz.add_(term)
        if want_x or want_w:  # input/weight slots only give shapes where not wanted
            g_x, g_wc = _conv_grads(dz, lx if lx is not None else x,
                                    lw if lw is not None else w, pad, want_x, want_w)
            g_w = g_wc if want_w else g_w
        return g_dz, g_x, g_w, None, None, None, None


def conv3x3(x: torch.Tensor, w: torch.Tensor, pad: int,
            fmt: torch.memory_format = torch.contiguous_format,
            inner_dx: bool = True) -> torch.Tensor:
    """Bias-free stride-1 convolution with the lean double backward; output in layout ``fmt``.

    x (N, Cin, H, W), w (Cout, Cin, k, k) -> (N, Cout, H + 2*pad - k + 1, W + 2*pad - k + 1).
    ``inner_dx=False`` skips the input gradient while a create_graph backward is being built
    (see :class:`_Conv`); use it only where that gradient is not wanted there.
    """
    return _Conv.apply(x, w, pad, fmt, inner_dx)


# ----------------------------------------------------------------------------- norm/act/pool


def _hw_sum(t: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, 1, 1): sum over one instance."""
    return t.sum((2, 3), keepdim=True)


_CHUNK_BYTES = 8 << 20  # product temporaries stay below glibc's mmap threshold (reused heap)


def _sample_chunks(t: torch.Tensor) -> list[slice]:
    """Slices of dim 0 whose activation-sized temporaries stay under :data:`_CHUNK_BYTES`."""
    return winograd.batch_slices(t.shape[0], t[0].numel() * t.element_size(), _CHUNK_BYTES)


def _hw_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, C, 1, 1) sums over (H, W) of a * b, in chunks of samples: a full-size product of
    IPC-10 activations (50 MB) would be a fresh allocation on every call."""
    return torch.cat([_hw_sum(a[s] * b[s]) for s in _sample_chunks(a)])


def _hw_sq_dev(z: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """(N, C, 1, 1) sums over (H, W) of (z - mu)^2, in chunks of samples (as :func:`_hw_dot`)."""
    parts = []
    for s in _sample_chunks(z):
        d = z[s] - mu[s]
        parts.append(_hw_sum(d.mul_(d)))
    return torch.cat(parts)


def _instance_norm_nhwc(z, w, b, eps):
    """(w * (z - mu) * rstd + b, mu, rstd) per (sample, channel) of a channels_last CPU tensor.

    PyTorch's CPU group norm kernel in channels_last reads each instance with a stride of C
    (16x16 and 8x8 maps at C = 128 took 10-20x the contiguous kernel's time) and takes the
    variance as E[z^2] - mu^2, which cancels when |mu| is large against the spread (a mean of
    10 standard deviations lost three digits in float32). Here the mean is one reduction over
    (H, W), the variance a second one over the centred values, and the output one fused
    multiply-add in the input's layout; the contiguous kernel's formula, two passes.
    """
    m = z.shape[2] * z.shape[3]
    mu = _hw_sum(z) / m  # (N, C, 1, 1)
    rstd = (_hw_sq_dev(z, mu) / m + eps).rsqrt()
    s = w.view(1, -1, 1, 1) * rstd
    y = torch.addcmul(b.view(1, -1, 1, 1) - mu * s, z, s)
    n, c = z.shape[:2]
    return y, mu.view(n, c), rstd.view(n, c)


def _dy(dp, a, pool: bool):
    """Gradient at the norm output u: pool backward, then the ReLU mask (a = relu(u) > 0).

    The 2x2 average-pool backward is a nearest upsampling of dp / 4 (exactly the native
    kernel's dp / 4 per pixel; one fresh tensor, masked in place); odd sizes take the native
    kernel. In channels_last ``interpolate`` is the fastest; in the contiguous layout it
    converts to channels_last and back (two extra copies of the activation), so there the rows
    and then the columns are repeated (measured 3x faster than ``interpolate`` and 2x faster
    than the native backward, which zero-fills its output first).
    """
    if not pool:
        return _relu_backward(dp, a, 0.0)
    if a.shape[-2] % 2 or a.shape[-1] % 2:
        da = _pool_backward(dp, a, [2, 2], [2, 2], [0, 0], False, True, None)
    elif a.is_contiguous():
        da = (dp * 0.25).repeat_interleave(2, dim=3).repeat_interleave(2, dim=2)
    else:
        da = F.interpolate(dp * 0.25, scale_factor=2, mode="nearest")  # (N, C, H, W)
    return _relu_backward_(da, a, 0.0, grad_input=da)


@dataclass(frozen=True)
class _Block:
    """The non-tensor settings of a fused block, one argument of the autograd functions:
    ``pool`` (2x2 average pool or none), the layout ``fmt``, ``native`` (the first-order
    backward is PyTorch's group-norm kernel)."""

    pool: bool
    fmt: torch.memory_format
    native: bool


class NormValues:
    """The norm blocks' per-instance values of one pass over a student step, in call order:
    each forward's (mu, rstd) and each first-order backward's (s, A, B), (N, C) each.

    The adjoint mode records them while its forward pass takes a step's gradient (no graph)
    and hands them back to the graph-only rebuild of the same step (:func:`norm_values`),
    whose blocks then skip the C passes that make them: a statistics pass over each block's
    input and a sums pass over its three maps. The rebuild runs the same kernels on the same
    maps, so the values are the ones it would compute, bit for bit. Only the blocks that run
    as C passes (:func:`.norm_passes.compiled_passes`) record and replay."""

    def __init__(self) -> None:
        self.items: list[tuple[str, tuple[torch.Tensor, ...]]] = []
        self.used = 0  # replayed so far

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for _, v in self.items for t in v)


_NORM_VALUES: list = [None, False]  # (NormValues or None, replaying); see norm_values


@contextlib.contextmanager
def norm_values(values: NormValues | None, replay: bool) -> Iterator[None]:
    """Within the block the norm blocks record their values into ``values`` (``replay``
    false) or take them from it in order (true; every recorded value must be used by the
    block's end). None: neither. A global switch, as :func:`weight_grad_values`."""
    before = tuple(_NORM_VALUES)
    _NORM_VALUES[:] = [values, replay]
    try:
        yield
        if values is not None and replay and values.used != len(values.items):
            raise RuntimeError(f"the rebuilt step used {values.used} of the "
                               f"{len(values.items)} norm values its forward pass recorded")
    finally:
        _NORM_VALUES[:] = before


def _replayed(kind: str, z: torch.Tensor) -> tuple[torch.Tensor, ...] | None:
    """The next recorded values (of ``kind``, for a map of z's batch) when replaying."""
    values, replay = _NORM_VALUES
    if values is None or not replay:
        return None
    if values.used >= len(values.items) or values.items[values.used][0] != kind \
            or values.items[values.used][1][0].shape[0] != z.shape[0]:
        raise RuntimeError(f"the rebuilt step's norm block #{values.used} ({kind}, batch "
                           f"{z.shape[0]}) does not match what its forward pass recorded")
    values.used += 1
    return values.items[values.used - 1][1]


def _record(kind: str, *vals: torch.Tensor) -> None:
    values, replay = _NORM_VALUES
    if values is not None and not replay:
        values.items.append((kind, vals))


class _NormActPool(Function):
    """p = avgpool2x2(relu(w * xh + b)), xh = (z - mu) * rstd per (sample, channel).

    z (N, C, H, W); w, b (C,); mu, rstd (N, C) as GroupNorm(C, C) computes them.
    """

    @staticmethod
    def forward(ctx, z, w, b, eps, block: _Block):
        n, c, h, wd = z.shape
        native = block.native or z.device.type != "cpu" or z.is_contiguous()
        a = mask = None  # the ReLU output (its mask), or the (s, t) that remake it
        if not native and compiled_passes(block.pool, z):
            p, mu, rstd, *mask = norm_passes.forward(z, w, b, eps, block.pool,
                                                     _replayed("stats", z))
            _record("stats", mu, rstd)
        else:
            y, mu, rstd = (torch.native_group_norm(z, w, b, n, c, h * wd, c, eps) if native
                           else _instance_norm_nhwc(z, w, b, eps))
            a = y.relu_()  # (N, C, H, W); saved: it is the ReLU mask
            p = F.avg_pool2d(a, 2) if block.pool else a
        ctx.save_for_backward(z, w, a)
        ctx.stats = (mu.view(n, c, 1, 1), rstd.view(n, c, 1, 1))
        ctx.block, ctx.mask = block, mask
        return p

    @staticmethod
    def backward(ctx, dp):
        z, w, a = ctx.saved_tensors
        mu, rstd = ctx.stats
        relu = a if ctx.mask is None else ctx.mask  # the C forward's (s, t) remake its mask
        dz, dw, db = _NormActPoolGrad.apply(_as(dp, ctx.block.fmt), z, w, relu, mu, rstd, ctx.block)
        return dz, dw, db, None, None


def _terms(dp, z, w, a, mu, rstd, pool) -> Terms:
    dy = _dy(dp, a, pool)
    return terms_from(dy, _hw_sum(dy), _hw_dot(dy, z), w, mu, rstd, z.shape[2] * z.shape[3])


class _NormActPoolGrad(Function):
    """Backward of :class:`_NormActPool` (per instance, means over its m = H*W pixels):

        dz = s * (dy - mean(dy) - xh * mean(dy * xh)),  s = w * rstd
        dw = sum_{n,h,w} dy * xh,   db = sum_{n,h,w} dy.

    Double backward, for adjoints (Lz, Lw, Lb) of (dz, dw, db), with t = dy - mean(dy) - xh*B:

        q    = s * (Lz - mean(Lz) - xh * mean(Lz * xh)) + Lw * xh + Lb     (adjoint of dy)
        d dp = avgpool(relu_mask * q)
        d w  = sum_n rstd * sum_hw Lz * t
        G    = -s * (B * Lz + mean(Lz * xh) * dy) + Lw * dy                 (explicit d/d xh)
        d z  = rstd * (G - mean(G) - xh * mean(G * xh)) - rstd^2 * w * mean(Lz * t) * xh

    (the last term is the path through rstd; the ReLU mask has zero derivative almost
    everywhere). Each line is written as per-instance coefficients times full-size tensors.

    ``native``: the first-order (dz, dw, db) come from PyTorch's own group-norm backward
    kernel instead (two passes over the activations instead of five, and bitwise what the
    modules GroupNorm -> ReLU -> AvgPool2d give); the per-instance sums the double backward
    needs are then computed in the double backward, if one is taken.
    """

    @staticmethod
    def forward(ctx, dp, z, w, relu, mu, rstd, block: _Block):
        # relu: the ReLU output a, or the C forward's (s, t), which remake its mask
        a, mask = (relu, None) if isinstance(relu, torch.Tensor) else (None, relu)
        ctx.save_for_backward(dp, z, w, a)
        ctx.stats, ctx.pool, ctx.fmt, ctx.mask = (mu, rstd), block.pool, block.fmt, mask
        if block.native:
            n, c, h, wd = z.shape
            dy = _dy(dp, a, block.pool)
            ctx.sums = None
            return torch.ops.aten.native_group_norm_backward(
                dy, z, mu.view(n, c), rstd.view(n, c), w, n, c, h * wd, c, [True, True, True])
        if mask is not None and compiled_passes(block.pool, z, dp):
            dz, T = norm_passes.grad(Maps(dp, z, *mask, block.pool), w, mu, rstd,
                                     _replayed("sums", z))
            _record("sums", T.s, T.A, T.B)
        else:
            T = _terms(dp, z, w, relu_of(a, z, mask), mu, rstd, block.pool)
            k = -T.s * rstd * T.B  # dz = s*dy + k*z + c  (xh expanded)
            dz = torch.addcmul(-T.s * T.A - k * mu, T.dy, T.s).addcmul_(z, k)
        db = (T.A * T.m).sum((0, 2, 3))
        dw = (T.B * T.m).sum((0, 2, 3))
        ctx.sums = (T.s, T.A, T.B)  # (N, C, 1, 1) each; dy is recomputed, not stored
        return dz, dw, db

    @staticmethod
    def backward(ctx, Lz, Lw, Lb):
        dp, z, w, a = ctx.saved_tensors
        mu, rstd = ctx.stats
        Lz = _as(Lz, ctx.fmt)
        Lw4 = None if Lw is None else Lw.view(1, -1, 1, 1)
        Lb4 = None if Lb is None else Lb.view(1, -1, 1, 1)
        need = ctx.needs_input_grad[:2]
        if ctx.mask is not None and compiled_passes(ctx.pool, z, dp, Lz):
            g_dp, g_z, g_w = norm_passes.double_backward(
                Maps(dp, z, *ctx.mask, ctx.pool), w, (mu, rstd), ctx.sums, (Lz, Lw4, Lb4),
                need)
            return g_dp, g_z, g_w, None, None, None, None
        a = relu_of(a, z, ctx.mask)
        if ctx.sums is None:
            T = _terms(dp, z, w, a, mu, rstd, ctx.pool)
        else:
            T = Terms(_dy(dp, a, ctx.pool), *ctx.sums, z.shape[2] * z.shape[3])
        sums = None if Lz is None else (_hw_sum(Lz), _hw_dot(Lz, z), _hw_dot(Lz, T.dy))
        L, g_w = adjoints(T, Lz, sums, Lw4, Lb4, mu, rstd)
        g_dp = _adjoint_dp(T, L, z, mu, rstd, a, ctx.pool) if need[0] else None
        g_z = _adjoint_z(T, L, z, w, mu, rstd) if need[1] else None
        return g_dp, g_z, g_w, None, None, None, None


def _adjoint_dp(T: Terms, L: Adjoints, z, mu, rstd, a, pool):
    """avgpool(mask * q); q = s*Lz + qz*z + qc with xh = rstd*(z - mu) expanded."""
    qz, qc = q_coefs(T, L, mu, rstd)
    q = torch.addcmul(qc, z, qz)
    if L.Lz is not None:
        q.addcmul_(L.Lz, T.s)
    q = _relu_backward_(q, a, 0.0, grad_input=q)
    return F.avg_pool2d(q, 2) if pool else q


def _adjoint_z(T: Terms, L: Adjoints, z, w, mu, rstd):
    """rstd*(G - mean G - xh*mean(G*xh)) - rstd^2*w*Lt*xh, computed in place on G, where
    G = gd*dy + gl*Lz with gd = Lw - s*C1, gl = -s*B."""
    G = T.dy * (L.Lw4 - T.s * L.C1)
    if L.Lz is not None:
        G.addcmul_(L.Lz, -T.s * T.B)
    kz, kc = z_coefs(T, L, w, mu, rstd, _hw_sum(G), _hw_dot(G, z))
    return G.mul_(rstd).addcmul_(z, kz).add_(kc)


def norm_act_pool(z: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float, pool: bool,
                  fmt: torch.memory_format = torch.contiguous_format,
                  native: bool = False) -> torch.Tensor:
    """Fused GroupNorm(C, C) -> ReLU -> (2x2 average pool): (N, C, H, W) -> (N, C, H/2, W/2).

    ``z`` must already be in layout ``fmt`` (as :func:`conv3x3` returns it). ``native``: the
    first-order backward is PyTorch's group-norm kernel, bitwise the modules' gradients (the
    module ConvNet's path); without it, the hand-written one of the unrolled student. Both
    have the same hand-written double backward.
    """
    return _NormActPool.apply(z, w, b, eps, _Block(pool, fmt, native))
