"""The Winograd tile transforms kept within a student step (``winograd.kept_tiles``) and the
double backward's shared transform of its adjoint (``conv_sum_weight_grad``): kernels read a
kept transform instead of making it again, and every result keeps its bits."""

from __future__ import annotations

import pytest
import torch

from datadistill.matching import (
    StudentSteps,
    adjoint_backward,
    student_forward,
    student_trajectory,
    unroll_student,
)
from datadistill.models import create_model, flatten_params, winograd
from datadistill.models.winograd import FORWARD, INPUT_GRAD, kept_tiles

CL = torch.channels_last


def _map(n, c, h, w, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, h, w, generator=g, dtype=dtype).contiguous(memory_format=CL)


def _filt(co, ci, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(co, ci, 3, 3, generator=g, dtype=dtype)


@pytest.fixture
def transforms(monkeypatch):
    """Counts the tile transforms actually computed."""
    calls = []
    real = winograd._tile_transform
    monkeypatch.setattr(winograd, "_tile_transform", lambda x: calls.append(x.shape) or real(x))
    return calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("chunk", [None, 1])
def test_fused_double_backward_terms_are_the_two_calls_bit_for_bit(dtype, chunk, monkeypatch):
    if chunk is not None:  # one image per chunk: the filter gradient sums over the chunks
        monkeypatch.setattr(winograd, "CHUNK_ELEMENTS", chunk)
    lx, x = _map(3, 32, 9, 14, 0, dtype), _map(3, 32, 9, 14, 1, dtype)
    dz = _map(3, 40, 9, 14, 2, dtype)
    w, lw = _filt(40, 32, 3, dtype), _filt(40, 32, 4, dtype)
    out, dw = winograd.conv_sum_weight_grad(lx, w, x, lw, dz)
    assert torch.equal(out, winograd.conv_sum(lx, w, x, lw))
    assert torch.equal(dw, winograd.conv_weight_grad(dz, lx))
    out2, none = winograd.conv_sum_weight_grad(lx, w, x, lw, None)
    assert none is None and torch.equal(out2, out)


def test_a_kept_transform_serves_the_weight_gradient(transforms):
    x, dy, w = _map(2, 32, 16, 16, 0), _map(2, 48, 16, 16, 1), _filt(48, 32, 2)
    plain = winograd.conv(x, w), winograd.conv_weight_grad(dy, x)
    assert len(transforms) == 2
    transforms.clear()
    with kept_tiles(FORWARD) as scope:
        kept = winograd.conv(x, w), winograd.conv_weight_grad(dy, x)
        assert len(transforms) == 1  # x transformed once, for both kernels
        assert scope.nbytes == 36 * 2 * 16 * 32 * 4  # (36, tiles x channels) float32
    assert scope.entries == {} and winograd._SCOPES == []  # freed with the block
    for a, b in zip(kept, plain, strict=True):
        assert torch.equal(a, b)


def test_a_map_changed_in_place_is_transformed_again(transforms):
    x, dy, w = _map(2, 32, 8, 8, 0), _map(2, 32, 8, 8, 1), _filt(32, 32, 2)
    with kept_tiles(FORWARD):
        winograd.conv(x, w)
        x.mul_(2.0)  # same storage, same shape: only the version counter tells
        got = winograd.conv_weight_grad(dy, x)
    assert len(transforms) == 2
    assert torch.equal(got, winograd.conv_weight_grad(dy, x.clone(memory_format=CL)))


def test_roles_decide_what_a_block_keeps():
    x, dz, w = _map(1, 32, 8, 8, 0), _map(1, 32, 8, 8, 1), _filt(32, 32, 2)
    with kept_tiles(FORWARD) as fwd:
        winograd.conv(x, w)
        winograd.conv_input_grad(dz, w)
        assert len(fwd.entries) == 1  # x's, not dz's
    with kept_tiles(FORWARD, INPUT_GRAD) as outer:
        with kept_tiles(INPUT_GRAD) as inner:
            winograd.conv(x, w)  # the innermost block taking FORWARD is the outer one
            winograd.conv_input_grad(dz, w)
            assert len(outer.entries) == 1 and len(inner.entries) == 1
        outer.roles = frozenset()  # look up only
        winograd.conv(_map(1, 32, 8, 8, 3), w)
        assert len(outer.entries) == 1


def test_autograd_never_gets_a_kept_transform(transforms):
    """Where autograd records the transform (the PyTorch form, a map that requires grad),
    nothing is kept or read: a kept tensor has no graph."""
    x = _map(1, 32, 8, 8, 0).requires_grad_()
    with kept_tiles(FORWARD) as scope, torch.enable_grad():
        winograd._input_tiles(x, FORWARD)
        winograd._input_tiles(x, FORWARD)
        assert scope.entries == {} and len(transforms) == 2


def _matching_grads(mode):
    """d(matching loss)/d(images, syn_lr) of two student steps of a width-32 ConvNet-3 on
    32x32 images (its 16x16 and 8x8 layers take Winograd), float32."""
    torch.manual_seed(0)
    model = create_model("convnet", 3, 4, 32, width=32)
    forward = student_forward(model)
    theta0 = flatten_params(model)
    g = torch.Generator().manual_seed(1)
    images = torch.randn(4, 3, 32, 32, generator=g).requires_grad_()
    labels = torch.arange(4)
    syn_lr = torch.tensor(0.01, requires_grad=True)
    target = theta0 + 0.01 * torch.randn(theta0.numel(), generator=g)
    steps, gen = StudentSteps(2), torch.Generator().manual_seed(2)
    if mode == "unrolled":
        theta_n = unroll_student(forward, theta0, images, labels, syn_lr, steps, generator=gen)
        return torch.autograd.grad(((theta_n - target) ** 2).sum(), [images, syn_lr])
    with student_trajectory(forward, theta0, images, labels, syn_lr, steps,
                            generator=gen) as traj:
        theta_n = traj.final.requires_grad_()
        (lam,) = torch.autograd.grad(((theta_n - target) ** 2).sum(), theta_n)
        out = adjoint_backward(forward, traj, images, labels, syn_lr, lam)
    return out.images, out.syn_lr


@pytest.mark.parametrize("mode", ["unrolled", "adjoint"])
def test_matching_gradients_keep_their_bits_with_fewer_transforms(mode, transforms,
                                                                   monkeypatch):
    kept = _matching_grads(mode)
    n_kept = len(transforms)
    transforms.clear()
    with monkeypatch.context() as m:  # every kernel makes its own transforms
        m.setattr(winograd, "KEEP_TILES", False)
        again = _matching_grads(mode)
    assert n_kept < len(transforms)  # the kept transforms were read
    for a, b in zip(kept, again, strict=True):
        assert torch.equal(a, b)
    assert winograd._SCOPES == []
