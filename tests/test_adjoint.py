"""Adjoint-mode matching: the unrolled student's gradient, replayed one step at a time.

Every comparison is float64, relative error (2-norm) <= 1e-6 against the unrolled graph, for
the images, the step size and the soft labels.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from datadistill.config import config_asdict, list_configs
from datadistill.data.augment import DSA, FAMILIES
from datadistill.errors import CompatibilityError, ConfigError, DivergenceError
from datadistill.experts import ExpertConfig, train_experts
from datadistill.matching import (
    AdjointOptions,
    SnapshotStore,
    StudentSteps,
    adjoint_backward,
    check_micro_batch,
    convnet_plan,
    matching_loss,
    student_forward,
    student_trajectory,
    unroll_student,
)
from datadistill.matching.masks import param_mask
from datadistill.models import create_model, flatten_params
from datadistill.tm.checkpoint import load_checkpoint, save_checkpoint
from datadistill.tm.config import distill_config, load_pipeline_config
from datadistill.tm.distill import DistillConfig, check_resume, distill
from datadistill.tm.presets import list_presets
from parity import toy_strategy

F64 = torch.float64
TOL = 1e-6


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


@dataclass
class _Case:
    model: nn.Module
    theta0: torch.Tensor  # (P,)
    target: torch.Tensor  # (P,)
    images: torch.Tensor  # (N, C, H, W), requires grad
    labels: torch.Tensor  # (N,) hard or (N, K) soft, requires grad
    syn_lr: torch.Tensor  # ()

    @property
    def inputs(self) -> list[torch.Tensor]:
        soft = self.labels.dim() == 2
        return [self.images, self.syn_lr] + ([self.labels] if soft else [])


def _case(name: str = "convnet", soft: bool = False, n: int = 7, size: int = 8) -> _Case:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        kwargs = {"width": 8} if name == "convnet" else {}
        model = create_model(name, 1, 3, size, **kwargs).double()
    theta0 = flatten_params(model)
    target = theta0 + 0.01 * _rand(theta0.numel(), seed=3)
    images = _rand(n, 1, size, size, seed=4).requires_grad_()
    labels = _rand(n, 3, seed=5).requires_grad_() if soft else torch.arange(n) % 3
    syn_lr = torch.tensor(0.05, dtype=F64, requires_grad=True)
    return _Case(model, theta0, target, images, labels, syn_lr)


def _mask_fn(kind: str | None):
    """PAD's parameter mask from the path's own theta_N (as the distillation loop does)."""
    if kind is None:
        return lambda theta_n, target: None
    return lambda theta_n, target: param_mask(kind, 0.25, numel=theta_n.numel(),
                                              sq_err=(theta_n.detach() - target).square())


def _unrolled(c: _Case, forward, *, steps, batch, dsa, seed, mask=None):
    gen = torch.Generator().manual_seed(seed)
    theta_n = unroll_student(forward, c.theta0, c.images, c.labels, c.syn_lr,
                             StudentSteps(steps, batch, dsa), generator=gen)
    loss = matching_loss(theta_n, c.theta0, c.target, _mask_fn(mask)(theta_n, c.target))
    return loss.detach(), list(torch.autograd.grad(loss, c.inputs)), gen


def _adjoint(c: _Case, forward, *, steps, batch, dsa, seed, mask=None, micro_batch=None,
             snapshots="memory", kept_graphs=1):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        traj = student_trajectory(forward, c.theta0, c.images, c.labels, c.syn_lr,
                                  StudentSteps(steps, batch, dsa), generator=gen,
                                  options=AdjointOptions(micro_batch, snapshots, kept_graphs))
    theta_n = traj.final.detach().requires_grad_()
    loss = matching_loss(theta_n, c.theta0, c.target, _mask_fn(mask)(theta_n, c.target))
    (lam,) = torch.autograd.grad(loss, theta_n)
    with torch.no_grad():  # the replay builds its own graphs whatever the caller's mode
        out = adjoint_backward(forward, traj, c.images, c.labels, c.syn_lr, lam)
    grads = [out.images, out.syn_lr] + ([out.labels] if out.labels is not None else [])
    return loss.detach(), grads, gen


def _assert_same(got, ref):
    """Same loss and gradients: relative error <= TOL, reference gradients non-zero."""
    loss, grads, _ = got
    ref_loss, ref_grads, _ = ref
    assert abs(float(loss - ref_loss)) <= TOL * abs(float(ref_loss))
    assert len(grads) == len(ref_grads)
    for g, r in zip(grads, ref_grads, strict=True):
        assert g.shape == r.shape and g.dtype == r.dtype
        assert float(r.norm()) > 0
        assert float((g - r).norm() / r.norm()) <= TOL


def _both(c: _Case, fast: bool = True, micro_batch=None, **kw):
    forward = student_forward(c.model, fast=fast)
    return (_adjoint(c, forward, micro_batch=micro_batch, **kw), _unrolled(c, forward, **kw))


# ----------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("fast", [True, False])
def test_mtt_dsa_and_mini_batches(fast):
    c = _case()  # hard labels; 7 images, batches of 3: the permutation wraps within 6 steps
    got, ref = _both(c, fast, steps=6, batch=3, dsa=DSA(), seed=1)
    _assert_same(got, ref)
    assert torch.equal(got[2].get_state(), ref[2].get_state())  # the same draws were consumed


def test_datm_soft_labels():
    c = _case(soft=True)
    _assert_same(*_both(c, steps=5, batch=4, dsa=DSA(), seed=2))


@pytest.mark.parametrize("mask", ["depth", "loss"])
def test_pad_parameter_masks(mask):
    c = _case(soft=True)
    _assert_same(*_both(c, steps=4, batch=5, dsa=DSA(), seed=3, mask=mask))


@pytest.mark.parametrize("family", [*FAMILIES, "none"])
def test_micro_batch_smaller_than_the_batch(family):
    # Batches of 7 in chunks of 3, 3 and 1; one DSA family per case, so every family's draw
    # is sliced per chunk at least once.
    c = _case(soft=True)
    _assert_same(*_both(c, micro_batch=3, steps=3, batch=None, dsa=DSA(family), seed=4))


@pytest.mark.parametrize("name", ["mlp", "lenet"])
def test_non_convnet_student_through_the_generic_forward(name):
    c = _case(name, soft=True, n=6, size=28)
    assert convnet_plan(c.model) is None  # student_forward falls back to functional_forward
    _assert_same(*_both(c, steps=3, batch=4, dsa=DSA(), seed=5))
    _assert_same(*_both(c, micro_batch=2, steps=3, batch=4, dsa=DSA(), seed=5))


def test_fast_and_generic_convnet_agree_in_adjoint_mode():
    c = _case(soft=True)
    kw = dict(steps=4, batch=4, dsa=DSA(), seed=6, micro_batch=3)
    fast = _adjoint(c, student_forward(c.model, fast=True), **kw)
    generic = _adjoint(c, student_forward(c.model, fast=False), **kw)
    _assert_same(fast, generic)


def test_trajectory_records_the_unrolled_parameters():
    c = _case()
    forward = student_forward(c.model)
    traj = student_trajectory(forward, c.theta0, c.images, c.labels, c.syn_lr,
                              StudentSteps(3, 4, DSA()), generator=torch.Generator().manual_seed(7))
    assert len(traj.thetas) == 4 and len(traj.steps) == 3
    assert torch.equal(traj.thetas[0], c.theta0) and not traj.final.requires_grad
    theta_n = unroll_student(forward, c.theta0, c.images, c.labels, c.syn_lr,
                             StudentSteps(3, 4, DSA()), generator=torch.Generator().manual_seed(7))
    assert torch.allclose(traj.final, theta_n.detach(), rtol=1e-12, atol=1e-14)
    assert [len(s.idx) for s in traj.steps] == [3, 4, 3]  # popped from the end, as MTT


def test_spilled_trajectory_gives_bitwise_the_same_gradients():
    c = _case(soft=True)
    forward = student_forward(c.model)
    kw = dict(steps=5, batch=4, dsa=DSA(), seed=11, micro_batch=3)
    kept = _adjoint(c, forward, **kw)
    spilled = _adjoint(c, forward, snapshots="spill", **kw)
    assert torch.equal(kept[0], spilled[0])
    for g, r in zip(spilled[1], kept[1], strict=True):
        assert torch.equal(g, r) and float(r.norm()) > 0


@pytest.mark.parametrize("micro_batch", [None, 2])
def test_the_last_step_is_not_rebuilt_when_it_is_one_chunk(micro_batch):
    """The forward pass keeps the last step's graph (one chunk) for the backward pass: N
    forward calls, then N - 1 rebuilt steps; with two chunks per step every step is rebuilt.
    A second backward pass on the same trajectory rebuilds it and gives the same gradients."""
    c = _case(soft=True)
    inner = student_forward(c.model)
    calls = []

    def forward(theta, x):
        calls.append(len(x))
        return inner(theta, x)

    traj = student_trajectory(forward, c.theta0, c.images, c.labels, c.syn_lr,
                              StudentSteps(4, 4, DSA()), generator=torch.Generator().manual_seed(8),
                              options=AdjointOptions(micro_batch))
    chunks = 1 if micro_batch is None else 2  # mini-batches of 3 and 4 images
    assert len(calls) == 4 * chunks and list(traj.kept) == ([3] if chunks == 1 else [])
    theta_n = traj.final.detach().requires_grad_()
    (lam,) = torch.autograd.grad(matching_loss(theta_n, c.theta0, c.target), theta_n)
    first = adjoint_backward(forward, traj, c.images, c.labels, c.syn_lr, lam)
    assert len(calls) == 4 * chunks + (3 if chunks == 1 else 8) and traj.kept == {}
    again = adjoint_backward(forward, traj, c.images, c.labels, c.syn_lr, lam)
    for a, b in zip((first.images, first.syn_lr, first.labels),
                    (again.images, again.syn_lr, again.labels), strict=True):
        assert torch.equal(a, b) and float(a.norm()) > 0


def _spill_trajectory(c: _Case, forward, steps=3):
    return student_trajectory(forward, c.theta0, c.images, c.labels, c.syn_lr,
                              StudentSteps(steps, 4), generator=torch.Generator().manual_seed(12),
                              options=AdjointOptions(snapshots="spill"))


def _closed(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return True
    return False


@pytest.mark.parametrize("micro_batch", [None, 3])
def test_rebuilt_steps_skip_the_weight_gradient_kernels_bitwise(monkeypatch, micro_batch):
    """A step that is one chunk is rebuilt as a graph only: its g_i comes from the forward
    pass, so the ConvNet's convolutions skip their first-order weight-gradient kernels in the
    rebuild (one per convolution per rebuilt step), and the gradients are bitwise those of a
    rebuild that computes them (``Trajectory.grad`` patched to record nothing). Steps of
    several chunks are rebuilt with their values, as before."""
    import datadistill.matching.adjoint as adjoint_mod
    import datadistill.models.convnet_ops as ops

    c = _case(soft=True)
    forward = student_forward(c.model, fast=True)
    convs = sum(1 for m in c.model.modules() if isinstance(m, nn.Conv2d))
    real = ops._conv_grads
    calls = []

    def counted(dz, x, w, pad, need_x, need_w):
        calls.append(need_w)
        return real(dz, x, w, pad, need_x, need_w)

    monkeypatch.setattr(ops, "_conv_grads", counted)
    kw = dict(steps=5, batch=4, dsa=DSA(), seed=13, micro_batch=micro_batch)
    got = _adjoint(c, forward, **kw)  # step batches 3, 4, 3, 4, 3 (popped from the end)
    with_skip = sum(calls)
    calls.clear()
    monkeypatch.setattr(adjoint_mod.Trajectory, "grad", lambda self, i: None)
    ref = _adjoint(c, forward, **kw)
    one_chunk_rebuilt = 4 if micro_batch is None else 2  # the last step's graph is kept
    assert sum(calls) - with_skip == convs * one_chunk_rebuilt
    assert torch.equal(got[0], ref[0])
    for g, r in zip(got[1], ref[1], strict=True):
        assert torch.equal(g, r) and float(r.norm()) > 0


@pytest.mark.parametrize("micro_batch", [None, 3])
def test_rebuilt_steps_read_the_forward_pass_norm_values_bitwise(monkeypatch, micro_batch):
    """The forward pass records each one-chunk step's norm values (every block's mean and
    rstd, and its first-order backward's per-instance sums); the graph-only rebuild of that
    step reads them instead of running the C passes that compute them, one statistics pass and
    one sums pass per block per rebuilt step, and the gradients are bitwise those of a rebuild
    that computes them. Steps of several chunks and spilled snapshots record nothing."""
    import datadistill.models.convnet_ops as ops
    import datadistill.models.norm_passes as passes

    c = _case(soft=True)
    forward = student_forward(c.model, fast=True)
    blocks = sum(1 for m in c.model.modules() if isinstance(m, nn.GroupNorm))
    given = []
    real_forward, real_grad = passes.forward, passes.grad
    monkeypatch.setattr(passes, "forward", lambda *a: given.append(
        ("stats", a[5] is not None)) or real_forward(*a))
    monkeypatch.setattr(passes, "grad", lambda *a: given.append(
        ("sums", a[4] is not None)) or real_grad(*a))
    kw = dict(steps=5, batch=4, dsa=DSA(), seed=13, micro_batch=micro_batch)
    got = _adjoint(c, forward, **kw)  # step batches 3, 4, 3, 4, 3 (popped from the end)
    read = [kind for kind, g in given if g]
    one_chunk_rebuilt = 4 if micro_batch is None else 2  # the last step's graph is kept
    assert read.count("stats") == read.count("sums") == blocks * one_chunk_rebuilt
    given.clear()
    spilled = _adjoint(c, forward, snapshots="spill", **kw)
    assert not any(g for _, g in given)
    monkeypatch.setattr(ops, "_record", lambda *a: None)
    ref = _adjoint(c, forward, **kw)
    for other in (spilled, ref):
        assert torch.equal(got[0], other[0])
        for g, r in zip(got[1], other[1], strict=True):
            assert torch.equal(g, r) and float(r.norm()) > 0


def test_norm_values_must_match_the_rebuilt_step():
    """A rebuild whose blocks do not meet the values recorded for them, in kind or batch, or
    that leaves some unused, is an error, not a silent mix."""
    from datadistill.models.convnet_ops import NormValues, norm_values

    c = _case()
    forward = student_forward(c.model, fast=True)
    theta = c.theta0.clone().requires_grad_()
    x = c.images.detach()[:3]
    values = NormValues()
    with torch.enable_grad(), norm_values(values, replay=False):
        torch.autograd.grad(forward(theta, x).sum(), theta)
    assert [k for k, _ in values.items][0] == "stats" and values.nbytes > 0
    with pytest.raises(RuntimeError, match="does not match"):  # another batch
        with torch.enable_grad(), norm_values(values, replay=True):
            forward(theta, c.images.detach()[:4])
    values.used = 0
    with pytest.raises(RuntimeError, match="used 0 of"):
        with norm_values(values, replay=True):
            pass
    values.used, values.items[0] = 0, ("sums", values.items[0][1])
    with pytest.raises(RuntimeError, match=r"#0 \(stats"):
        with torch.enable_grad(), norm_values(values, replay=True):
            forward(theta, x)


def test_weight_grad_values_off_keeps_the_graph():
    """Under ``weight_grad_values(False)`` the first-order weight gradient of a convolution is
    zeros, and the vector-Jacobian product through that graph (outside the block) is the one
    of the graph built with the values (float64)."""
    from datadistill.models.convnet_ops import conv3x3, weight_grad_values

    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.randn(5, 4, 3, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    v = torch.randn(5, 4, 3, 3, dtype=torch.float64, generator=gen)

    def vjp(values: bool):
        with weight_grad_values(values):
            z = conv3x3(x, w, 1)
            (g,) = torch.autograd.grad((z * z).sum(), w, create_graph=True)
        return g.detach(), torch.autograd.grad(g, (x, w), grad_outputs=v)

    g_on, (gx_on, gw_on) = vjp(True)
    g_off, (gx_off, gw_off) = vjp(False)
    assert float(g_on.norm()) > 0 and torch.count_nonzero(g_off) == 0
    torch.testing.assert_close(gx_off, gx_on, rtol=1e-12, atol=0)
    torch.testing.assert_close(gw_off, gw_on, rtol=1e-12, atol=0)


@pytest.mark.parametrize("fast", [True, False])
def test_kept_graphs_give_bitwise_the_same_gradients(fast):
    """kept_graphs=K: the forward pass keeps the last K steps' graphs and the backward pass
    rebuilds only the others (N forward calls, then N - K rebuilt steps), with bitwise the
    gradients of K = 1 for every K, also past N (every step kept)."""
    c = _case(soft=True)
    inner = student_forward(c.model, fast=fast)
    calls = []

    def forward(theta, x):
        calls.append(len(x))
        return inner(theta, x)

    kw = dict(steps=5, batch=4, dsa=DSA(), seed=12)
    ref = _adjoint(c, forward, **kw)
    for k in (2, 5, 9):
        calls.clear()
        got = _adjoint(c, forward, kept_graphs=k, **kw)
        assert len(calls) == 5 + 5 - min(k, 5)
        assert torch.equal(got[0], ref[0])
        for g, r in zip(got[1], ref[1], strict=True):
            assert torch.equal(g, r) and float(r.norm()) > 0


def test_only_one_kept_graph_returns_large_blocks(monkeypatch):
    """K = 1 returns large freed blocks to the kernel in both passes (memory at one step's
    graph); with K > 1 the freed memory stays in the process, so the kept graphs reuse it."""
    import contextlib

    import datadistill.matching.adjoint as adjoint

    seen = []
    monkeypatch.setattr(adjoint, "large_blocks_returned",
                        lambda active=True: seen.append(active) or contextlib.nullcontext())
    c = _case()
    for k in (1, 3):
        _adjoint(c, student_forward(c.model), steps=3, batch=4, dsa=None, seed=2, kept_graphs=k)
    assert seen == [True, True, False, False]


def test_kept_graphs_are_not_kept_for_steps_of_several_chunks():
    c = _case()
    traj = student_trajectory(student_forward(c.model), c.theta0, c.images, c.labels,
                              c.syn_lr, StudentSteps(3, 4),
                              generator=torch.Generator().manual_seed(1),
                              options=AdjointOptions(micro_batch=2, kept_graphs=3))
    assert traj.kept == {}


def test_spilled_snapshots_read_back_and_the_file_is_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    c = _case()
    forward = student_forward(c.model)
    kept = student_trajectory(forward, c.theta0, c.images, c.labels, c.syn_lr, StudentSteps(3, 4),
                              generator=torch.Generator().manual_seed(12))
    with _spill_trajectory(c, forward) as traj:
        fd = traj.thetas._fd
        assert fd is not None and os.listdir(tmp_path) == []  # unlinked at creation
        assert os.fstat(fd).st_size == 3 * c.theta0.numel() * 8  # theta_0..theta_2 on disk
        for i in range(4):
            assert torch.equal(traj.thetas[i], kept.thetas[i])
    assert _closed(fd)


def test_spill_file_is_freed_when_a_step_fails(monkeypatch):
    c = _case()
    forward = student_forward(c.model)
    calls = []

    def failing(theta, x):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("step 3 failed")
        return forward(theta, x)

    opened = []
    real_spill = SnapshotStore._spill

    def spill(self, i, theta):
        real_spill(self, i, theta)
        opened.append(self._fd)

    monkeypatch.setattr(SnapshotStore, "_spill", spill)
    with pytest.raises(RuntimeError, match="step 3 failed"):
        _spill_trajectory(c, failing, steps=5)
    assert opened and _closed(opened[-1])


def test_snapshots_key_is_checked_and_may_change_on_resume(tmp_path):
    with pytest.raises(ConfigError, match="distill.snapshots='disk'; choose one of memory, spill"):
        DistillConfig.of(dataset="digits", snapshots="disk")
    saved = config_asdict(DistillConfig.of(dataset="digits", grad_mode="adjoint"))
    check_resume(DistillConfig.of(dataset="digits", grad_mode="adjoint", snapshots="memory"),
                 saved, tmp_path)
    with pytest.raises(CompatibilityError, match="grad_mode: 'adjoint' -> 'unrolled'"):
        check_resume(DistillConfig.of(dataset="digits"), saved, tmp_path)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_draw_replays_chunk_by_chunk(family):
    dsa = DSA(family)
    x = _rand(5, 3, 8, 8, seed=8)
    draw = dsa.sample(5, (8, 8), generator=torch.Generator().manual_seed(9))
    whole = dsa.apply(x, draw)
    for rows in (slice(0, 2), slice(2, 5)):
        part = dsa.apply(x[rows], draw.select(rows))
        assert torch.allclose(part, whole[rows], rtol=0, atol=1e-12)


@pytest.mark.gpu
def test_adjoint_on_cuda_matches_unrolled():
    c = _case(soft=True)
    c = _Case(c.model.cuda(), c.theta0.cuda(), c.target.cuda(),
              c.images.detach().cuda().requires_grad_(), c.labels.detach().cuda().requires_grad_(),
              c.syn_lr.detach().cuda().requires_grad_())
    got, ref = _both(c, micro_batch=3, steps=4, batch=5, dsa=DSA(), seed=10)
    _assert_same(got, ref)
    assert got[1][0].device.type == "cuda"


# ----------------------------------------------------------------------------- BatchNorm


def test_micro_batch_refuses_batchnorm():
    bn = create_model("convnet_bn", 1, 3, 8, width=8)
    with pytest.raises(CompatibilityError, match="BatchNorm.*micro_batch=null"):
        check_micro_batch(bn, 2, 10, "model=convnet_bn")
    check_micro_batch(bn, 10, 10)  # one chunk per step splits nothing
    check_micro_batch(bn, None, 10)
    check_micro_batch(create_model("convnet", 1, 3, 8, width=8), 2, 10)  # instance norm


# ----------------------------------------------------------------------------- the loop


@pytest.fixture(scope="module")
def store(digits, tmp_path_factory):
    cfg = ExpertConfig(dataset="digits", num_experts=2, epochs=4, lr=0.1, batch_size=64,
                       model_kwargs={"width": 8})
    return train_experts(cfg, digits, tmp_path_factory.mktemp("experts"), progress=False)


def _cfg(**kw) -> DistillConfig:
    base = dict(dataset="digits", model_kwargs={"width": 8}, ipc=2, syn_steps=3,
                expert_epochs=2, max_start_epoch=2, lr_img=10.0, lr_lr=1e-5, lr_teacher=0.01,
                batch_syn=8, iterations=3, eval_every=3, eval_runs=0, checkpoint_every=2,
                grad_mode="adjoint")
    return DistillConfig.of(**(base | kw))


def _preset(name: str) -> dict:
    """The preset's distillation strategy, on a window that fits the 4-epoch test experts."""
    return toy_strategy(name) | {"method": name}


def _state(path):
    state = load_checkpoint(path / "checkpoint.pt")
    momentum = [s["momentum_buffer"] for o in state.optimizers.values()
                for s in o["state"].values()]
    ema = [] if state.ema is None else [t for t in state.ema.values()
                                        if isinstance(t, torch.Tensor)]
    return state, [state.images, state.labels, state.syn_lr, *momentum, *ema]


@pytest.mark.parametrize("name", sorted(list_presets()))
def test_every_preset_runs_in_both_modes_to_the_same_result(name, digits, store, tmp_path):
    rows = {}
    for mode in ("unrolled", "adjoint"):
        cfg = _cfg(grad_mode=mode, **_preset(name))
        distill(cfg, tmp_path / mode, data=digits, store=store, progress=False)
        rows[mode] = [{k: r[k] for k in ("expert", "start_epoch", "skipped")} | {"loss": r["loss"]}
                      for r in map(json.loads, (tmp_path / mode / "metrics.jsonl").open())
                      if "loss" in r]
    (a, ta), (u, tu) = _state(tmp_path / "adjoint"), _state(tmp_path / "unrolled")
    assert [r.pop("loss") for r in rows["adjoint"]] == pytest.approx(
        [r.pop("loss") for r in rows["unrolled"]], rel=1e-4)
    assert rows["adjoint"] == rows["unrolled"]  # same experts, windows, skips
    for k in a.generators:  # the same random draws, to the bit
        assert torch.equal(a.generators[k], u.generators[k])
    assert len(ta) == len(tu)
    for x, y in zip(ta, tu, strict=True):
        assert torch.allclose(x.float(), y.float(), rtol=1e-4, atol=1e-5 * float(y.abs().max()))


def test_adjoint_run_resumes_bitwise(digits, store, tmp_path):
    cfg = _cfg(iterations=6, eval_every=3, label_mode="soft", micro_batch=3, ema_decay=0.9,
               param_mask="loss", param_mask_ratio=0.25)
    distill(cfg, tmp_path / "full", data=digits, store=store, progress=False)

    def interrupt(it, row):
        if it == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        distill(cfg, tmp_path / "cut", data=digits, store=store, progress=False,
                on_iteration=interrupt)
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt").iteration == 3
    distill(cfg, tmp_path / "cut", data=digits, store=store, progress=False)
    (full, tf), (cut, tc) = _state(tmp_path / "full"), _state(tmp_path / "cut")
    assert full.config["grad_mode"] == "adjoint" and full.config["micro_batch"] == 3
    for x, y in zip([*tf, *full.generators.values()], [*tc, *cut.generators.values()],
                    strict=True):
        assert torch.equal(x, y)


def test_kept_graphs_change_nothing_but_may_change_on_resume(digits, store, tmp_path):
    """A run with distill.kept_graphs=3 saves bitwise what kept_graphs=1 saves, and a run
    resumed with another kept_graphs goes on."""
    distill(_cfg(iterations=2), tmp_path / "one", data=digits, store=store, progress=False)
    distill(_cfg(iterations=2, kept_graphs=3), tmp_path / "three", data=digits, store=store,
            progress=False)
    (_, t1), (three, t3) = _state(tmp_path / "one"), _state(tmp_path / "three")
    assert three.config["kept_graphs"] == 3
    for x, y in zip(t1, t3, strict=True):
        assert torch.equal(x, y)
    distill(_cfg(iterations=3, kept_graphs=2), tmp_path / "three", data=digits, store=store,
            progress=False)
    assert load_checkpoint(tmp_path / "three" / "checkpoint.pt").iteration == 3


def test_grad_mode_and_micro_batch_are_fixed_on_resume(digits, store, tmp_path):
    distill(_cfg(iterations=1), tmp_path, data=digits, store=store, progress=False)
    assert json.loads((tmp_path / "config.json").read_text())["grad_mode"] == "adjoint"
    with pytest.raises(CompatibilityError, match="grad_mode: 'adjoint' -> 'unrolled'"):
        distill(_cfg(iterations=2, grad_mode="unrolled"), tmp_path, data=digits, store=store,
                progress=False)
    with pytest.raises(CompatibilityError, match="micro_batch: None -> 4"):
        distill(_cfg(iterations=2, micro_batch=4), tmp_path, data=digits, store=store,
                progress=False)


def test_threshold_skips_the_backward_pass(digits, store, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the backward pass ran for a skipped iteration")

    monkeypatch.setattr("datadistill.tm.distill.adjoint_backward", fail)
    result = distill(_cfg(iterations=2, threshold=0.0), tmp_path, data=digits, store=store,
                     progress=False)
    rows = [json.loads(r) for r in result.metrics_path.read_text().splitlines()]
    assert [r["skipped"] for r in rows if "loss" in r] == [True, True]
    with pytest.raises(AssertionError, match="backward pass ran"):  # not skipped: it runs
        distill(_cfg(iterations=1), tmp_path / "b", data=digits, store=store, progress=False)


def test_the_loop_hands_micro_batch_and_dsa_to_both_passes(digits, store, tmp_path,
                                                          monkeypatch):
    """The forward pass gets them from the config; the backward pass replays the
    trajectory the forward pass returned, which carries them."""
    import datadistill.tm.distill as distill_mod

    seen, made = [], []
    real_forward, real_backward = distill_mod.student_trajectory, distill_mod.adjoint_backward

    def forward_pass(*args, **kwargs):
        made.append(real_forward(*args, **kwargs))
        return made[-1]

    def backward_pass(forward, traj, *args):
        seen.append((traj is made[-1], traj.options.micro_batch, traj.settings.dsa is not None,
                     traj.options.snapshots))
        return real_backward(forward, traj, *args)

    monkeypatch.setattr(distill_mod, "student_trajectory", forward_pass)
    monkeypatch.setattr(distill_mod, "adjoint_backward", backward_pass)
    distill(_cfg(iterations=1, micro_batch=3, snapshots="spill"), tmp_path, data=digits,
            store=store, progress=False)
    assert seen == [(True, 3, True, "spill")]


def test_divergence_guard_in_adjoint_mode(digits, store, tmp_path):
    with pytest.raises(DivergenceError, match="step size|loss|images"):
        distill(_cfg(iterations=20, lr_lr=1e4, eval_every=1), tmp_path, data=digits,
                store=store, progress=False)
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert float(state.syn_lr) > 0 and torch.isfinite(state.images).all()


def test_batchnorm_student_with_micro_batch_is_refused(digits, store, tmp_path):
    cfg = _cfg(model="convnet_bn", micro_batch=4)
    with pytest.raises(CompatibilityError, match="batch of 8 images.*BatchNorm"):
        distill(cfg, tmp_path, data=digits, store=store, progress=False)
    assert not (tmp_path / "checkpoint.pt").exists()


def test_config_checks():
    with pytest.raises(ConfigError, match="grad_mode"):
        _cfg(grad_mode="reverse")
    with pytest.raises(ConfigError, match="needs distill.grad_mode=adjoint"):
        _cfg(grad_mode="unrolled", micro_batch=4)
    with pytest.raises(ConfigError, match="micro_batch must be >= 1"):
        _cfg(micro_batch=0)
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ConfigError, match="kept_graphs must be an integer >= 1"):
            _cfg(kept_graphs=bad)
    with pytest.raises(ConfigError, match="kept_graphs=3 needs distill.grad_mode=adjoint"):
        _cfg(grad_mode="unrolled", kept_graphs=3)
    assert DistillConfig().grad.grad_mode == "unrolled" and DistillConfig().grad.micro_batch is None


def test_shipped_configs_accept_adjoint_mode():
    names = [n for n in list_configs() if "infer" not in n]
    assert names
    for name in names:
        cfg = load_pipeline_config(name, ["distill.grad_mode=adjoint", "distill.micro_batch=16"])
        dcfg = distill_config(cfg)
        assert (dcfg.grad.grad_mode, dcfg.grad.micro_batch) == ("adjoint", 16)


def test_a_checkpoint_from_before_grad_mode_resumes_as_unrolled(digits, store, tmp_path):
    cfg = _cfg(grad_mode="unrolled")
    distill(dataclasses.replace(cfg, iterations=1), tmp_path, data=digits, store=store,
            progress=False)
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    del state.config["grad_mode"], state.config["micro_batch"]  # written by an older version
    save_checkpoint(tmp_path / "checkpoint.pt", state)
    result = distill(cfg, tmp_path, data=digits, store=store, progress=False)
    assert result.iterations_done == 3
    with pytest.raises(CompatibilityError, match="grad_mode: 'unrolled' -> 'adjoint'"):
        save_checkpoint(tmp_path / "checkpoint.pt", state)
        distill(_cfg(iterations=4), tmp_path, data=digits, store=store, progress=False)
