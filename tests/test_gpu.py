"""CUDA against the CPU: every stage end to end at toy scale on the digits (``pytest -m gpu``).

Skipped without a CUDA device (tests/conftest.py). Each test runs one stage on the CPU and on
CUDA with the same seeds and compares the outputs with the tolerances stated and justified
in tests/parity.py (the CPU halves and the tolerances are exercised by tests/test_parity.py
in the default suite). benchmarks/gpu_check.sh runs the same comparisons without pytest.
"""

from __future__ import annotations

import pytest
import torch

import parity as P

pytestmark = pytest.mark.gpu
DEVICE = "cuda"


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """The CPU-made expert store and teacher store (distill and infer compare only their own
    stage across devices)."""
    return P.prepare_shared(tmp_path_factory.mktemp("shared"))


def _same_on_cuda(fn, tmp_path) -> None:
    rows = P.compare_stage(fn, "cuda", "cpu", tmp_path)
    assert not P.failures(rows), P.describe(rows)


@pytest.mark.parametrize("optimizer", ["sgd", "gsam"])
def test_experts_on_cuda_match_the_cpu(optimizer, tmp_path):
    _same_on_cuda(lambda d, w: P.run_experts(d, w, optimizer=optimizer), tmp_path)


@pytest.mark.parametrize("grad_mode", P.GRAD_MODES)
@pytest.mark.parametrize("preset", P.PRESETS)
def test_distill_on_cuda_matches_the_cpu(preset, grad_mode, shared, tmp_path):
    from datadistill.experts.store import ExpertStore

    store_dir, _ = shared
    _same_on_cuda(lambda d, w: P.run_distill(d, w, ExpertStore(store_dir), preset, grad_mode),
                  tmp_path)


def test_eval_on_cuda_matches_the_cpu(tmp_path):
    _same_on_cuda(P.run_eval, tmp_path)


def test_baselines_on_cuda_match_the_cpu(tmp_path):
    _same_on_cuda(P.run_baselines, tmp_path)


def test_teachers_on_cuda_match_the_cpu(tmp_path):
    _same_on_cuda(P.run_teachers, tmp_path)


def test_infer_on_cuda_matches_the_cpu(shared, tmp_path):
    _, teacher_dir = shared
    _same_on_cuda(lambda d, w: P.run_infer(d, w, teacher_dir), tmp_path)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="the NCCL pair needs 2 GPUs")
@pytest.mark.parametrize("stage", ["experts", "distill"])
def test_torchrun_nccl_pair_matches_one_process(stage, tmp_path):
    rows = P.compare_pair("cuda", tmp_path, stage)
    assert not P.failures(rows), P.describe(rows)


@pytest.mark.parametrize("native", [False, True])
@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_fused_norm_act_pool_on_cuda_equals_the_modules(fmt, native):
    """The fused op runs on CUDA with the same code: values, gradients and the double
    backward equal GroupNorm -> ReLU -> AvgPool2d on CUDA (float64)."""
    from datadistill.models.convnet_ops import norm_act_pool

    g = torch.Generator().manual_seed(0)
    z0 = torch.randn(3, 4, 6, 6, generator=g, dtype=torch.float64)
    w0, b0 = torch.randn(4, generator=g, dtype=torch.float64), torch.randn(4, generator=g,
                                                                             dtype=torch.float64)

    def run(fused: bool):
        z = z0.to(DEVICE).contiguous(memory_format=fmt).requires_grad_()
        w, b = w0.to(DEVICE).requires_grad_(), b0.to(DEVICE).requires_grad_()
        if fused:
            p = norm_act_pool(z, w, b, 1e-5, True, fmt, native)
        else:
            p = torch.nn.functional.group_norm(z, 4, w, b, 1e-5)
            p = torch.nn.functional.avg_pool2d(torch.relu(p), 2)
        grads = torch.autograd.grad((p ** 3).sum(), [z, w, b], create_graph=True)
        again = torch.autograd.grad(sum((v ** 2).sum() for v in grads), [z, w, b])
        return [p, *grads, *again]

    for a, b in zip(run(True), run(False), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_module_convnet_on_cuda_runs_the_plain_modules():
    from datadistill.models import create_model

    net = create_model("convnet", 3, 5, 16, width=4).cuda()
    x = torch.zeros(2, 3, 16, 16, device="cuda")
    assert not net._fusable(x) and net._fusable(x.cpu())
