"""Winograd F(4x4, 3x3) convolution kernels of the student (datadistill.models.winograd)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from datadistill.matching import StudentSteps, conv3x3, student_forward, unroll_student
from datadistill.models import create_model, flatten_params, winograd

F64 = torch.float64
CL = torch.channels_last
_BWD = torch.ops.aten.convolution_backward.default


def _rand(*shape, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype)


def _native_grads(dy, x, w):
    gx, gw, _ = _BWD(dy, x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
                     [True, True, False])
    return gx, gw


# H and W not multiples of 4 (partial edge tiles), unequal channel counts, several images
SHAPES = [(2, 32, 40, 8, 8), (3, 36, 32, 9, 14), (1, 32, 33, 13, 8), (2, 40, 32, 16, 16)]


@pytest.mark.parametrize("n,cin,cout,h,w", SHAPES)
def test_kernels_equal_the_native_convolution_in_float64(n, cin, cout, h, w):
    x = _rand(n, cin, h, w).contiguous(memory_format=CL)
    wt = _rand(cout, cin, 3, 3, seed=1)
    dy = _rand(n, cout, h, w, seed=2).contiguous(memory_format=CL)
    assert winograd.applies(x, wt, 1)
    y = winograd.conv(x, wt)
    assert y.shape == (n, cout, h, w) and y.is_contiguous(memory_format=CL)
    torch.testing.assert_close(y, F.conv2d(x, wt, padding=1), rtol=0, atol=1e-11)
    gx, gw = _native_grads(dy, x, wt)
    torch.testing.assert_close(winograd.conv_input_grad(dy, wt), gx, rtol=0, atol=1e-11)
    torch.testing.assert_close(winograd.conv_weight_grad(dy, x), gw, rtol=0, atol=1e-10)


@pytest.mark.parametrize("n,cin,cout,h,w", [SHAPES[1], SHAPES[3]])
def test_chunks_of_images_give_the_same_convolution(n, cin, cout, h, w, monkeypatch):
    """Batches are cut into chunks of images (one image each here) to keep the transform-
    domain temporaries small; the filter gradient sums over the chunks."""
    x = _rand(n, cin, h, w).contiguous(memory_format=CL)
    wt = _rand(cout, cin, 3, 3, seed=1)
    dy = _rand(n, cout, h, w, seed=2).contiguous(memory_format=CL)
    whole = (winograd.conv(x, wt), winograd.conv_input_grad(dy, wt),
             winograd.conv_weight_grad(dy, x))
    monkeypatch.setattr(winograd, "CHUNK_ELEMENTS", 1)
    assert len(winograd._chunks(n, 1)) == n
    chunked = (winograd.conv(x, wt), winograd.conv_input_grad(dy, wt),
               winograd.conv_weight_grad(dy, x))
    for a, b in zip(chunked, whole, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-11)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "gradient"])
def test_filters_in_every_layout_give_the_same_convolution(layout):
    x = _rand(2, 32, 8, 12).contiguous(memory_format=CL)
    dy = _rand(2, 40, 8, 12, seed=2).contiguous(memory_format=CL)
    wt = _rand(40, 32, 3, 3, seed=1)
    if layout == "channels_last":
        wt = wt.contiguous(memory_format=CL)
    elif layout == "gradient":  # the memory order conv_weight_grad returns
        wt = wt.permute(2, 3, 0, 1).contiguous().permute(2, 3, 0, 1)
    torch.testing.assert_close(winograd.conv(x, wt), F.conv2d(x, wt, padding=1),
                               rtol=0, atol=1e-11)
    torch.testing.assert_close(winograd.conv_input_grad(dy, wt), _native_grads(dy, x, wt)[0],
                               rtol=0, atol=1e-11)


def test_float32_error_stays_near_the_direct_kernel():
    """Winograd's transforms round more than the direct sum: within 20x of it, and 2e-5 of the
    output's scale, on well-conditioned inputs (unit normal maps, He-scaled filters)."""
    x = _rand(4, 128, 16, 16, dtype=torch.float32).contiguous(memory_format=CL)
    w = _rand(128, 128, 3, 3, seed=1, dtype=torch.float32) * (2 / (9 * 128)) ** 0.5
    ref = F.conv2d(x.double(), w.double(), padding=1)
    err = (winograd.conv(x, w).double() - ref).abs().max() / ref.abs().max()
    direct = (F.conv2d(x, w, padding=1).double() - ref).abs().max() / ref.abs().max()
    assert err < 2e-5 and err < 20 * max(direct, 1e-6), (err, direct)
    dy = _rand(4, 128, 16, 16, seed=2, dtype=torch.float32).contiguous(memory_format=CL)
    gw_ref = _native_grads(dy.double(), x.double(), w.double())[1]
    gw_err = (winograd.conv_weight_grad(dy, x).double() - gw_ref).abs().max()
    assert gw_err / gw_ref.abs().max() < 2e-5


@pytest.mark.parametrize("case,expected", [
    ("eligible", True), ("contiguous", False), ("few_in", False), ("few_out", False),
    ("small_map", False), ("pad0", False), ("5x5", False), ("disabled", False),
])
def test_applies_only_where_it_pays(case, expected, monkeypatch):
    x = torch.zeros(2, 32, 8, 8).contiguous(memory_format=CL)
    w, pad = torch.zeros(32, 32, 3, 3), 1
    if case == "contiguous":
        x = x.contiguous()
    elif case == "few_in":
        x, w = torch.zeros(2, 3, 8, 8).contiguous(memory_format=CL), torch.zeros(32, 3, 3, 3)
    elif case == "few_out":
        w = torch.zeros(16, 32, 3, 3)
    elif case == "small_map":
        x = torch.zeros(2, 32, 4, 8).contiguous(memory_format=CL)
    elif case == "pad0":
        pad = 0
    elif case == "5x5":
        w = torch.zeros(32, 32, 5, 5)
    elif case == "disabled":
        monkeypatch.setattr(winograd, "ENABLED", False)
    assert winograd.applies(x, w, pad) is expected


def test_environment_switch_turns_it_off():
    env = dict(os.environ, DATADISTILL_WINOGRAD="0")
    code = "from datadistill.models import winograd; print(winograd.ENABLED)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_conv_double_backward_through_winograd(monkeypatch):
    """gradgradcheck of the student's convolution with the Winograd kernels forced on at a
    size gradcheck can afford (the thresholds only choose where it pays)."""
    monkeypatch.setattr(winograd, "MIN_CHANNELS", 1)
    calls = []
    real = winograd.conv
    monkeypatch.setattr(winograd, "conv", lambda *a: calls.append(1) or real(*a))
    x = _rand(1, 2, 8, 9).contiguous(memory_format=CL).requires_grad_()
    w = _rand(3, 2, 3, 3, seed=1).requires_grad_()
    fn = lambda x, w: conv3x3(x, w, 1, CL)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w), fast_mode=True)
    assert torch.autograd.gradgradcheck(fn, (x, w), fast_mode=True)
    assert calls  # the Winograd path ran


def _unrolled_grads(model, images, labels):
    forward = student_forward(model)
    theta0 = flatten_params(model)
    target = theta0 + 0.01 * _rand(theta0.numel(), seed=5)
    syn_lr = torch.tensor(0.01, dtype=F64, requires_grad=True)
    theta_n = unroll_student(forward, theta0, images, labels, syn_lr, StudentSteps(3),
                             generator=torch.Generator().manual_seed(0))
    loss = ((theta_n - target) ** 2).sum()
    return torch.autograd.grad(loss, [images, syn_lr])


def test_unrolled_student_is_unchanged_by_winograd_in_float64(monkeypatch):
    """Three unrolled steps of a width-32 ConvNet-3 (16x16 and 8x8 maps take Winograd): the
    matching gradients agree with the native kernels' to float64 rounding."""
    model = create_model("convnet", 3, 4, 32, width=32).double()
    images = _rand(4, 3, 32, 32, seed=3).requires_grad_()
    labels = torch.arange(4)
    calls = []
    real = winograd.conv_weight_grad
    monkeypatch.setattr(winograd, "conv_weight_grad", lambda *a: calls.append(1) or real(*a))
    with_wino = _unrolled_grads(model, images, labels)
    assert calls
    monkeypatch.setattr(winograd, "ENABLED", False)
    calls.clear()
    native = _unrolled_grads(model, images, labels)
    assert not calls
    for a, b in zip(with_wino, native, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)
