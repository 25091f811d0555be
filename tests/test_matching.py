"""Unrolled student, fast ConvNet kernels, matching loss and start-epoch window."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.func import functional_call

from datadistill.data.augment import DSA
from datadistill.errors import CompatibilityError, ConfigError
from datadistill.matching import (
    BatchSampler,
    StudentSteps,
    conv3x3,
    convnet_plan,
    expanding_upper,
    matching_loss,
    norm_act_pool,
    sample_start_epoch,
    student_forward,
    unroll_student,
    window_bounds,
)
from datadistill.models import create_model, flatten_params
from datadistill.tm.presets import PRESETS

F64 = torch.float64
CL = torch.channels_last


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


# ----------------------------------------------------------------------------- kernels


@pytest.mark.parametrize("fmt", [torch.contiguous_format, CL])
def test_conv_double_backward(fmt):
    x = _rand(2, 2, 4, 4).contiguous(memory_format=fmt).requires_grad_()
    w = _rand(3, 2, 3, 3, seed=1).requires_grad_()
    fn = lambda x, w: conv3x3(x, w, 1, fmt)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w), fast_mode=True)
    assert torch.autograd.gradgradcheck(fn, (x, w), fast_mode=True)


@pytest.mark.parametrize("native", [False, True])
@pytest.mark.parametrize("pool", [True, False])
@pytest.mark.parametrize("fmt", [torch.contiguous_format, CL])
def test_norm_act_pool_double_backward(pool, fmt, native):
    z = _rand(2, 3, 4, 4).contiguous(memory_format=fmt).requires_grad_()
    w, b = _rand(3, seed=1).requires_grad_(), _rand(3, seed=2).requires_grad_()
    fn = lambda z, w, b: norm_act_pool(z, w, b, 1e-5, pool, fmt, native)  # noqa: E731
    expected = torch.relu(torch.nn.functional.group_norm(z, 3, w, b, 1e-5))
    expected = torch.nn.functional.avg_pool2d(expected, 2) if pool else expected
    assert torch.allclose(fn(z, w, b), expected)
    assert torch.autograd.gradcheck(fn, (z, w, b), fast_mode=True)
    assert torch.autograd.gradgradcheck(fn, (z, w, b), fast_mode=True)


@pytest.mark.parametrize(("n", "size"), [(4, 16), (40, 8)])
def test_student_norm_keeps_float32_precision_when_the_mean_is_large(n, size):
    """The student's channels_last instance norm centres before it squares: instances whose
    mean is 30 standard deviations keep float32 precision in the output and in the gradient,
    which reuses the statistics (~1e-5 here; PyTorch's channels_last kernel takes
    E[z^2] - mu^2 and is off by 4e-4 to 1.4e-3). float64 is the reference."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(n, 32, size, size, generator=g) + 30.0
    w, b = torch.rand(32, generator=g) + 0.5, torch.randn(32, generator=g)
    v = torch.randn(n, 32, size // 2, size // 2, generator=g)

    def run(z, w, b, ours):
        z = z.clone().requires_grad_()
        if ours:
            p = norm_act_pool(z.contiguous(memory_format=CL), w, b, 1e-5, True, CL)
        else:
            p = torch.nn.functional.group_norm(z, 32, w, b, 1e-5)
            p = torch.nn.functional.avg_pool2d(torch.relu(p), 2)
        (gz,) = torch.autograd.grad((p * v.to(p.dtype)).sum(), z)
        return p, gz

    got, got_grad = run(z, w, b, True)
    ref, ref_grad = run(z.double(), w.double(), b.double(), False)
    assert got.is_contiguous(memory_format=CL)
    torch.testing.assert_close(got.double(), ref, rtol=0, atol=5e-5)
    torch.testing.assert_close(got_grad.double(), ref_grad, rtol=0, atol=5e-5)


def test_chunked_reductions_and_odd_pool(monkeypatch):
    """The chunked per-instance dot products and the odd-size pool backward are exact."""
    from datadistill.models import convnet_ops as fastconv

    monkeypatch.setattr(fastconv, "_CHUNK_BYTES", 8 * 4 * 5 * 5)  # 2 samples per chunk
    z = _rand(5, 3, 5, 5).requires_grad_()
    w, b = _rand(3, seed=1).requires_grad_(), _rand(3, seed=2).requires_grad_()
    fn = lambda z, w, b: norm_act_pool(z, w, b, 1e-5, True)  # noqa: E731
    expected = torch.nn.functional.avg_pool2d(
        torch.relu(torch.nn.functional.group_norm(z, 3, w, b, 1e-5)), 2)
    assert torch.allclose(fn(z, w, b), expected)
    assert torch.autograd.gradgradcheck(fn, (z, w, b), fast_mode=True)


def _grads(net, x, y, create_graph):
    loss = torch.nn.functional.cross_entropy(net(x), y)
    return torch.autograd.grad(loss, [x, *net.parameters()], create_graph=create_graph)


def _grad_of_grad_norm(net, x, y):
    """d/d(x, params) of the squared norm of the first-order gradient: the double backward."""
    g = _grads(net, x, y, True)
    return torch.autograd.grad(sum((v ** 2).sum() for v in g), [x, *net.parameters()])


@pytest.mark.parametrize("kwargs", [{}, {"pool": "none", "depth": 2}, {"depth": 1}])
def test_module_fused_block_equals_the_plain_modules(kwargs):
    """On CPU the ConvNet module runs norm -> ReLU -> 2x2 avg pool as one op: bitwise the
    modules' values and first-order gradients (images and every parameter), and their double
    backward to rounding (float64, small well-conditioned inputs)."""
    torch.manual_seed(0)
    net = create_model("convnet", 3, 5, 16, **({"width": 6} | kwargs)).double()
    plain = copy.deepcopy(net)
    plain.fused = False
    x, y = _rand(4, 3, 16, 16).requires_grad_(), torch.arange(4) % 5
    assert net._fusable(x) and not plain._fusable(x)
    assert torch.equal(net(x), plain(x))
    for a, b in zip(_grads(net, x, y, False), _grads(plain, x, y, False), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(_grad_of_grad_norm(net, x, y), _grad_of_grad_norm(plain, x, y),
                    strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_module_block_is_plain_where_it_cannot_fuse():
    x = _rand(2, 3, 16, 16)
    assert not create_model("convnet", 3, 5, 16, width=4, norm="batchnorm")._fusable(x)
    assert not create_model("convnet", 3, 5, 16, width=4, act="sigmoid")._fusable(x)
    assert not create_model("convnet", 3, 5, 16, width=4, pool="maxpool")._fusable(x)
    assert not create_model("convnet", 3, 5, 16, width=4)._fusable(x.to("meta"))


@pytest.mark.parametrize(("shape", "kwargs"), [
    ((3, 16), {}), ((3, 16), {"norm": "none"}), ((3, 16), {"pool": "none", "depth": 2}),
    ((3, 16), {"width": 8, "depth": 1}), ((1, 28), {"depth": 2}),  # MNIST: first pad 3
])
def test_plan_matches_module(shape, kwargs):
    torch.manual_seed(0)
    channels, size = shape
    net = create_model("convnet", channels, 5, size, **({"width": 8} | kwargs)).double()
    plan = convnet_plan(net)
    assert plan is not None
    x = _rand(3, channels, size, size)
    assert torch.allclose(plan.forward(flatten_params(net), x), net(x), rtol=1e-10, atol=1e-12)


def test_plan_declines_other_models():
    assert convnet_plan(create_model("convnet", 3, 5, 16, width=8, norm="batchnorm")) is None
    assert convnet_plan(create_model("mlp", 3, 5, 16)) is None


# ----------------------------------------------------------------------------- unroll


def _setup(soft: bool = False):
    torch.manual_seed(0)
    model = create_model("convnet", 1, 3, 8, width=8).double()
    theta0 = flatten_params(model)
    target = theta0 + 0.01 * _rand(theta0.numel(), seed=3)
    images = _rand(6, 1, 8, 8, seed=4).requires_grad_()
    labels = _rand(6, 3, seed=5).requires_grad_() if soft else torch.arange(6) % 3
    syn_lr = torch.tensor(0.05, dtype=F64, requires_grad=True)
    return model, theta0, target, images, labels, syn_lr


def _ce(logits, y):
    if y.dim() == 1:
        return torch.nn.functional.cross_entropy(logits, y)
    return -(y.softmax(1) * logits.log_softmax(1)).sum() / len(y)


def _independent(model, theta0, target, images, labels, syn_lr, steps, batch, seed):
    """Plain autograd on a module copy and a dict of parameters (no flat vector)."""
    net = copy.deepcopy(model)
    names = [n for n, _ in net.named_parameters()]
    sizes = [p.numel() for p in net.parameters()]

    def as_dict(flat):
        parts = zip(names, flat.split(sizes), net.parameters(), strict=True)
        return {n: v.view_as(p) for n, v, p in parts}

    start, goal = as_dict(theta0), as_dict(target)
    params = {n: p.clone().requires_grad_() for n, p in start.items()}
    gen, dsa, chunks = torch.Generator().manual_seed(seed), DSA(), []
    for _ in range(steps):
        if not chunks:
            chunks = list(torch.randperm(len(images), generator=gen).split(batch))
        idx = chunks.pop()
        x = dsa(images[idx], generator=gen)  # same draws, same order as unroll_student
        ce = _ce(functional_call(net, params, (x,)), labels[idx])
        grads = torch.autograd.grad(ce, list(params.values()), create_graph=True)
        params = {n: p - syn_lr * g for (n, p), g in zip(params.items(), grads, strict=True)}
    num = sum(((params[n] - goal[n]) ** 2).sum() for n in names)
    den = sum(((start[n] - goal[n]) ** 2).sum() for n in names)
    return num / den


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("soft", [False, True])
def test_unroll_matches_independent_autograd(fast, soft):
    model, theta0, target, images, labels, syn_lr = _setup(soft)
    inputs = [images, syn_lr] + ([labels] if soft else [])
    steps, batch, seed = 4, 4, 7

    forward = student_forward(model, fast=fast)
    theta_n = unroll_student(forward, theta0, images, labels, syn_lr,
                             StudentSteps(steps, batch_syn=batch, dsa=DSA()),
                             generator=torch.Generator().manual_seed(seed))
    loss = matching_loss(theta_n, theta0, target)
    grads = torch.autograd.grad(loss, inputs)

    ref = _independent(model, theta0, target, images, labels, syn_lr, steps, batch, seed)
    ref_grads = torch.autograd.grad(ref, inputs)
    assert torch.allclose(loss, ref, rtol=1e-5, atol=0)
    for g, r in zip(grads, ref_grads, strict=True):
        assert torch.allclose(g, r, rtol=1e-5, atol=1e-5 * float(r.abs().max()))
        assert r.abs().max() > 0


def test_fast_and_generic_agree_in_float32():
    torch.manual_seed(0)
    model = create_model("convnet", 3, 4, 16, width=16)
    theta0 = flatten_params(model)
    target = theta0 + 0.01 * torch.randn(theta0.numel())
    out = []
    for fast in (True, False):
        images = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(1))
        images.requires_grad_()
        syn_lr = torch.tensor(0.01, requires_grad=True)
        theta_n = unroll_student(student_forward(model, fast=fast), theta0, images,
                                 torch.arange(8) % 4, syn_lr, StudentSteps(3, dsa=DSA()),
                                 generator=torch.Generator().manual_seed(2))
        loss = matching_loss(theta_n, theta0, target)
        out.append((loss.detach(), *torch.autograd.grad(loss, [images, syn_lr])))
    for a, b in zip(*out, strict=True):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-3 * float(b.abs().max()))


def test_batch_sampler_pops_chunks_from_the_end():
    gen = torch.Generator().manual_seed(0)
    perm = torch.randperm(5, generator=torch.Generator().manual_seed(0))
    sampler = BatchSampler(5, 2, gen)
    assert torch.equal(sampler.next(), perm[4:])
    assert torch.equal(sampler.next(), perm[2:4])
    assert torch.equal(sampler.next(), perm[:2])
    assert len(sampler.next()) == 1  # a new permutation: chunk sizes 2, 2, 1 again
    assert len(BatchSampler(5, None, gen).next()) == 5


# ----------------------------------------------------------------------------- loss, window


def test_matching_loss_and_mask():
    theta0, target = torch.zeros(4), torch.ones(4)
    theta_n = torch.tensor([1.0, 0.0, 0.5, 1.0])
    assert float(matching_loss(theta_n, theta0, target)) == pytest.approx(1.25 / 4)
    keep = torch.tensor([False, True, True, False])
    assert float(matching_loss(theta_n, theta0, target, keep)) == pytest.approx(1.25 / 2)
    idx = torch.tensor([1, 2])
    assert float(matching_loss(theta_n, theta0, target, idx)) == pytest.approx(1.25 / 2)
    with pytest.raises(CompatibilityError, match=r"start \(3,\) .* same flat \(P,\) shape"):
        matching_loss(theta_n, torch.zeros(3), target)


def test_window():
    gen = torch.Generator().manual_seed(0)
    draws = {sample_start_epoch(2, 5, gen) for _ in range(200)}
    assert draws == {2, 3, 4}
    with pytest.raises(ConfigError, match=r"window \[3, 3\) is empty"):
        sample_start_epoch(3, 3, gen)
    assert expanding_upper(0, current_max_start=10, max_start=20, expansion_end=100) == 10
    assert expanding_upper(50, current_max_start=10, max_start=20, expansion_end=100) == 15
    assert expanding_upper(500, current_max_start=10, max_start=20, expansion_end=100) == 20
    assert window_bounds("fixed", 7, min_start=1, max_start=9) == (1, 9)
    assert window_bounds("expanding", 50, min_start=0, max_start=20, current_max_start=10,
                         expansion_end=100) == (0, 15)
    datm = PRESETS["datm"].overrides["distill"]
    hint = f"DATM defaults: {datm['current_max_start_epoch']} and {datm['expansion_end']}"
    with pytest.raises(ConfigError, match=hint):
        window_bounds("expanding", 0, min_start=0, max_start=20)
    with pytest.raises(ConfigError, match="unknown window 'linear'"):
        window_bounds("linear", 0, min_start=0, max_start=20)


@pytest.mark.parametrize("dz_fmt", [torch.contiguous_format, CL])
@pytest.mark.parametrize("fmt", [torch.contiguous_format, CL])
@pytest.mark.parametrize("shape", [(2, 3, 16, 16), (3, 1, 17, 20), (2, 4, 32, 16)])
def test_first_layer_input_gradient_equals_the_native_kernel(shape, fmt, dz_fmt):
    """Images' input gradient (few channels) by one batched matmul and col2im: the native
    kernel's value in float64, in the input's layout, whatever the incoming layout."""
    from datadistill.models import convnet_ops

    n, c, h, w = shape
    x = _rand(*shape).contiguous(memory_format=fmt)
    wt = _rand(8, c, 3, 3, seed=1)
    dz = _rand(n, 8, h, w, seed=2).contiguous(memory_format=dz_fmt)
    assert convnet_ops._few_input_channels(x, wt, 1)
    got = convnet_ops._few_channel_input_grad(dz, wt, x)
    ref = torch.ops.aten.convolution_backward(dz, x, wt, None, [1, 1], [1, 1], [1, 1], False,
                                              [0, 0], 1, [True, False, False])[0]
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)
    assert got.is_contiguous(memory_format=fmt)
    assert not convnet_ops._few_input_channels(x[..., :15, :], wt, 1)  # small maps: native
    assert not convnet_ops._few_input_channels(_rand(2, 5, 16, 16), _rand(8, 5, 3, 3), 1)


def test_first_layer_double_backward_through_the_matmul_input_gradient():
    x = _rand(2, 3, 16, 16).contiguous(memory_format=CL).requires_grad_()
    w = _rand(4, 3, 3, 3, seed=1).requires_grad_()
    fn = lambda x, w: conv3x3(x, w, 1, CL)  # noqa: E731
    assert torch.autograd.gradgradcheck(fn, (x, w), fast_mode=True)
