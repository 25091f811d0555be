"""The student's first convolution (on the images) as C loops (datadistill.models.image_conv):
equal to the native convolution and its two gradients, in the student's double backward too,
and the native kernels wherever the loops do not apply."""

from __future__ import annotations

import platform

import pytest
import torch
import torch.nn.functional as F

from datadistill.models import convnet_ops, image_conv
from datadistill.runtime import ckernels

F64 = torch.float64
CL = torch.channels_last
needs_cc = pytest.mark.skipif(ckernels._compiler() is None, reason="no C compiler")
_ARGS = (None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1)
_conv_backward = torch.ops.aten.convolution_backward.default


def _rand(*shape, seed=0, dtype=F64, cl=False):
    t = torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    return t.contiguous(memory_format=CL) if cl else t


def _reference(x, w, dy):
    y = F.conv2d(x, w, None, 1, 1)
    dx, dw, _ = _conv_backward(dy, x, w, *_ARGS, [True, True, False])
    return y, dx, dw


# n, c, co, h, w: grey / RGB / RGBA, whole and partial register blocks of pixels and channels
SHAPES = [(2, 1, 16, 16, 16), (3, 3, 32, 17, 19), (2, 4, 48, 20, 16), (1, 3, 128, 16, 33)]


@needs_cc
@pytest.mark.parametrize("shape", SHAPES)
def test_the_c_loops_equal_the_native_convolution_and_its_gradients(shape):
    """Forward, input gradient and weight gradient against conv2d and its backward kernel in
    float64; the maps come back channels_last, as tensors of their own."""
    n, c, co, h, w = shape
    x, dy = _rand(n, c, h, w, cl=True), _rand(n, co, h, w, seed=1, cl=True)
    wt = _rand(co, c, 3, 3, seed=2)
    assert image_conv.applies(x, wt, 1, dy)
    want = _reference(x, wt, dy)
    got = image_conv.conv(x, wt), image_conv.input_grad(dy, wt), image_conv.weight_grad(dy, x)
    for g, e, name in zip(got, want, ("forward", "input grad", "weight grad"), strict=True):
        torch.testing.assert_close(g, e, rtol=0, atol=1e-12 * e.abs().max().item(), msg=name)
    for t in got[:2]:
        assert t._base is None and t.is_contiguous(memory_format=CL)
    assert got[2].shape == wt.shape and got[2].is_contiguous()


@needs_cc
def test_float32_stays_as_close_as_the_native_kernels():
    """In float32 at the CIFAR-10 shape each result is as close to float64 as the native
    kernel's, or within 2e-6 of the largest magnitude (each sum runs in a fixed order with one
    rounding per multiply-add: here 2e-7 to 8e-7, where a wrong term gives order 1)."""
    n, c, co, h, w = 4, 3, 128, 32, 32
    x, dy = _rand(n, c, h, w, cl=True), _rand(n, co, h, w, seed=1, cl=True)
    wt = _rand(co, c, 3, 3, seed=2)
    exact = _reference(x, wt, dy)
    x32, dy32, w32 = x.float(), dy.float(), wt.float()
    native = _reference(x32, w32, dy32)
    ours = (image_conv.conv(x32, w32), image_conv.input_grad(dy32, w32),
            image_conv.weight_grad(dy32, x32))
    for o, nat, e in zip(ours, native, exact, strict=True):
        scale = e.abs().max().item()
        err_ours = (o.double() - e).abs().max().item() / scale
        err_native = (nat.double() - e).abs().max().item() / scale
        assert err_ours < max(4 * err_native, 2e-6)


@needs_cc
def test_the_students_double_backward_is_unchanged():
    """The first layer inside the convolution's double backward (conv3x3 with the image
    gradient in the outer pass): gradients w.r.t. images and weights of a gradient norm, C
    loops on and off, agree in float64."""
    x = _rand(2, 3, 16, 16, cl=True).requires_grad_()
    wt = _rand(32, 3, 3, 3, seed=1).requires_grad_()
    v = _rand(2, 32, 16, 16, seed=2)

    def grads():
        z = convnet_ops.conv3x3(x, wt, 1, CL, inner_dx=False)
        (gw,) = torch.autograd.grad((z * v).square().sum(), wt, create_graph=True)
        return torch.autograd.grad(gw.square().sum(), (x, wt))

    on = grads()
    try:
        image_conv.ENABLED = False
        off = grads()
    finally:
        image_conv.ENABLED = True
    for a, b in zip(on, off, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-11 * b.abs().max().item())


@needs_cc
def test_the_student_calls_the_c_loops(monkeypatch):
    """conv3x3 on a 3-channel channels_last batch reaches the C loops for its forward and
    both gradients."""
    calls = []
    for name in ("conv", "input_grad", "weight_grad"):
        real = getattr(image_conv, name)
        monkeypatch.setattr(image_conv, name,
                            lambda *a, _n=name, _r=real: calls.append(_n) or _r(*a))
    x = _rand(2, 3, 16, 16, cl=True).requires_grad_()
    wt = _rand(16, 3, 3, 3, seed=1).requires_grad_()
    z = convnet_ops.conv3x3(x, wt, 1, CL)
    torch.autograd.grad(z.square().sum(), (x, wt))
    assert sorted(calls) == ["conv", "input_grad", "weight_grad"]


def test_the_native_kernels_serve_where_the_loops_do_not_apply(monkeypatch):
    """Too many input channels, output channels not whole vectors, small maps, another layout,
    padding other than 1, a graph being recorded, several threads, the switch off, no
    library: ``applies`` says no."""
    x, wt = _rand(2, 3, 16, 16, cl=True), _rand(16, 3, 3, 3, seed=1)
    cases = {
        "channels": (_rand(2, 5, 16, 16, cl=True), _rand(16, 5, 3, 3), 1),
        "outputs": (x, _rand(12, 3, 3, 3), 1),
        "small": (_rand(2, 3, 8, 16, cl=True), wt, 1),
        "layout": (x.contiguous(), wt, 1),
        "padding": (x, wt, 0),
        "tracked": (x, wt.clone().requires_grad_(), 1),
    }
    for name, (xi, wi, pad) in cases.items():
        assert not image_conv.applies(xi, wi, pad), name
    with torch.no_grad():
        assert image_conv.applies(x, wt.clone().requires_grad_(), 1) == (
            ckernels.load(image_conv._SOURCE) is not None)
    monkeypatch.setattr(image_conv, "ENABLED", False)
    assert not image_conv.applies(x, wt, 1)
    monkeypatch.setattr(image_conv, "ENABLED", True)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert not image_conv.applies(x, wt, 1)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    monkeypatch.setattr(image_conv, "_kernel", lambda name, dtype: None)
    assert not image_conv.applies(x, wt, 1)
    # and the student's convolution then gives the native values
    y = convnet_ops._conv(x, wt, 1)
    torch.testing.assert_close(y, F.conv2d(x, wt, None, 1, 1), rtol=0, atol=1e-12)


@needs_cc
@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 compiler flag")
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_the_loops_without_avx512_give_the_same_bits(dtype, monkeypatch, tmp_path):
    """The other register blocks (4 pixels, one vector: what CPUs without AVX-512 build) sum
    every term in the same order: a library built with AVX-512 switched off gives the same
    bits, in float32 too, at partial pixel blocks (w = 18)."""
    n, c, co, h, w = 2, 3, 32, 17, 18
    x, dy = _rand(n, c, h, w, dtype=dtype, cl=True), _rand(n, co, h, w, seed=1, dtype=dtype,
                                                            cl=True)
    wt = _rand(co, c, 3, 3, seed=2, dtype=dtype)
    want = [r.double() for r in _reference(x.double(), wt.double(), dy.double())]

    def results():
        return (image_conv.conv(x, wt), image_conv.input_grad(dy, wt),
                image_conv.weight_grad(dy, x))

    first = results()
    monkeypatch.setenv("DATADISTILL_CACHE", str(tmp_path))
    monkeypatch.setattr(ckernels, "FLAGS", (*ckernels.FLAGS, "-mno-avx512f"))
    lib = ckernels.load.__wrapped__(image_conv._SOURCE)
    assert lib is not None
    suffix = "f64" if dtype == F64 else "f32"

    def fn(name):
        f = getattr(lib, f"{name}_{suffix}")
        f.argtypes, f.restype = list(image_conv._ARGS[name]), None
        return f

    monkeypatch.setattr(image_conv, "_kernel", lambda name, dt: fn(name))
    tol = 1e-12 if dtype == F64 else 1e-5
    for a, b, e in zip(first, results(), want, strict=True):
        torch.testing.assert_close(b.double(), e, rtol=0, atol=tol * e.abs().max().item())
        assert torch.equal(a, b)
