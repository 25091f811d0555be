"""The expert store's size and time, predicted before training; the float16 store's round trip."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from datadistill.errors import ConfigError
from datadistill.experts import ExpertConfig, train_experts
from datadistill.experts.forecast import check_disk, forecast_store
from datadistill.experts.store import expert_path
from datadistill.experts.train import train_one_expert


def _cfg(**kw) -> ExpertConfig:
    base = dict(dataset="digits", num_experts=2, epochs=2, batch_size=64, model="convnet",
                model_kwargs={"width": 8, "depth": 1})
    return ExpertConfig(**{**base, **kw})


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_predicted_bytes_are_the_written_bytes(digits, tmp_path, dtype):
    cfg = _cfg(dtype=dtype)
    f = forecast_store(cfg, digits, tmp_path)
    assert f.experts == 2 and f.batches_per_epoch == -(-len(digits.train) // 64)
    assert f.batch_seconds > 0 and f.epoch_seconds > f.batch_seconds
    train_experts(cfg, digits, tmp_path, progress=False)
    written = [expert_path(tmp_path, i).stat().st_size for i in range(2)]
    for size in written:  # the tensors, plus torch.save's zip framing (a few KB)
        assert f.expert_bytes <= size <= f.expert_bytes + 8192
    assert forecast_store(cfg, digits, tmp_path).experts == 0  # nothing left to predict


def test_float16_halves_the_tensor_bytes(digits, tmp_path):
    a, b = forecast_store(_cfg(), digits, tmp_path), forecast_store(_cfg(dtype="float16"),
                                                                    digits, tmp_path)
    assert (a.expert_bytes - 4 * (a.epochs + 1)) == 2 * (b.expert_bytes - 4 * (b.epochs + 1))


def test_a_disk_too_small_is_refused_with_the_fixes(digits, tmp_path):
    f = dataclasses.replace(forecast_store(_cfg(), digits, tmp_path), free_bytes=10)
    with pytest.raises(ConfigError, match=r"needs 0\.00 GB more .*experts\.dtype=float16.*"
                                          r"experts\.num_experts"):
        check_disk(f, tmp_path)
    check_disk(dataclasses.replace(f, free_bytes=f.store_bytes), tmp_path)  # exactly fits


def test_float16_store_reads_back_as_float32_of_the_rounded_values(digits, tmp_path):
    cfg = _cfg(num_experts=1, dtype="float16")
    store = train_experts(cfg, digits, tmp_path, progress=False)
    from datadistill.data.augment import DSA

    # the same expert, float32, recomputed
    params, _ = train_one_expert(cfg, digits, 0, dsa=DSA(digits.info.dsa_strategy))
    back = store.load(0)
    assert back.dtype == torch.float32
    assert torch.equal(back, params.half().float())
    assert not torch.equal(back, params)  # rounding happened: the test would see a float32 store
    theta0, target = store.epoch_pair(0, start=0, span=2)
    assert theta0.dtype == target.dtype == torch.float32
    assert torch.equal(target, params[2].half().float())
