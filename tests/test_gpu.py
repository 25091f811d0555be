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
