"""Class-balanced training subsets (`train_per_class`) and cheaper expert monitoring.

Both exist for quick and CPU-scale runs; they must change only what they say they change.
"""

from __future__ import annotations

import json

import pytest
import torch

from datadistill.data import check_prepared, create_dataset, prepare
from datadistill.data.prepare import subset_per_class
from datadistill.errors import ConfigError
from datadistill.evaluation.protocols import test_accuracy
from datadistill.experts import ExpertConfig, ExpertStore, train_experts
from datadistill.experts.train import monitor_split
from datadistill.models.functional import load_flat_params
from datadistill.tm.config import distill_config, expert_config, load_pipeline_config
from datadistill.tm.pipeline import run_pipeline
from datadistill.training import build_model


def test_subset_is_balanced_seeded_and_drawn_from_the_split():
    full = create_dataset("digits", None, "train")
    a, b = subset_per_class(full, 7), subset_per_class(full, 7)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert torch.bincount(a.labels).tolist() == [7] * 10
    assert not torch.equal(subset_per_class(full, 7, seed=1).images, a.images)
    # every kept row is a row of the full split with its own label
    flat = full.images.flatten(1)
    for img, label in zip(a.images.flatten(1), a.labels, strict=True):
        row = (flat == img).all(1).nonzero().flatten()
        assert len(row) >= 1 and (full.labels[row] == label).all()


def test_subset_larger_than_a_class_names_the_limit():
    full = create_dataset("digits", None, "train")
    smallest = int(torch.bincount(full.labels).min())
    with pytest.raises(ConfigError, match=f"train_per_class <= {smallest}"):
        subset_per_class(full, smallest + 1)
    with pytest.raises(ConfigError, match=">= 1"):
        subset_per_class(full, 0)


def test_prepare_fits_zca_on_the_whole_split_then_subsets():
    whole = prepare("digits", zca=True)
    small = prepare("digits", zca=True, train_per_class=5)
    assert len(small.train) == 50 and small.train_per_class == 5
    assert torch.equal(small.zca.transform, whole.zca.transform)
    assert torch.equal(small.test.images, whole.test.images)  # the test split stays whole
    kept = subset_per_class(whole.train, 5)
    assert torch.equal(small.train.images, kept.images)


def test_check_prepared_refuses_another_subset():
    small = prepare("digits", train_per_class=5)
    check_prepared(small, "digits", False, "distill", 5)
    with pytest.raises(ConfigError, match=r"distill.train_per_class=None .* train_per_class=5"):
        check_prepared(small, "digits", False, "distill")
    with pytest.raises(ConfigError, match="experts.train_per_class=5"):
        train_experts(ExpertConfig(dataset="digits", num_experts=1, epochs=1,
                                   train_per_class=5), prepare("digits"), "unused",
                      progress=False)


def test_monitor_split_is_a_fixed_subset_and_does_not_touch_training(digits, tmp_path):
    x, y = monitor_split(digits.test, 40)
    x2, _ = monitor_split(digits.test, 40)
    assert len(x) == 40 and torch.equal(x, x2)
    assert monitor_split(digits.test, None)[0] is digits.test.images
    kw = dict(dataset="digits", num_experts=1, epochs=2, lr=0.1, batch_size=64,
              model_kwargs={"width": 8})
    plain = train_experts(ExpertConfig(**kw), digits, tmp_path / "a", progress=False)
    cheap = train_experts(ExpertConfig(**kw, test_samples=40), digits, tmp_path / "b",
                          progress=False)
    assert torch.equal(plain.load(0), cheap.load(0))  # same trajectory
    net = build_model(ExpertConfig(**kw), digits.info)
    load_flat_params(net, cheap.load(0)[-1])
    assert cheap.test_acc(0)[-1].item() == pytest.approx(test_accuracy(net, x, y))
    with pytest.raises(ConfigError, match="test_samples"):
        ExpertConfig(**kw, test_samples=0)


def test_pipeline_carries_the_subset_and_shares_a_store(tmp_path):
    tiny = ["train_per_class=20", "experts.num_experts=1", "experts.epochs=2",
            "model_kwargs.width=8", "distill.syn_steps=2", "distill.max_start_epoch=1",
            "distill.expert_epochs=1", "distill.iterations=1", "distill.eval_runs=0",
            "evaluation.runs=1", "evaluation.epochs=2", "evaluation.random_baseline=false"]
    cfg = load_pipeline_config("digits/mtt_ipc1", tiny)
    assert expert_config(cfg).train_per_class == 20
    assert distill_config(cfg).train_per_class == 20
    shared = tmp_path / "store"
    run_pipeline(cfg, tmp_path / "a", progress=False, expert_dir=shared)
    before = (shared / "expert_0000.pt").read_bytes()
    mtime = (shared / "expert_0000.pt").stat().st_mtime_ns
    run_pipeline(cfg, tmp_path / "b", progress=False, expert_dir=shared)
    assert (shared / "expert_0000.pt").stat().st_mtime_ns == mtime  # reused, not retrained
    assert (shared / "expert_0000.pt").read_bytes() == before
    assert not (tmp_path / "a" / "experts").exists()
    assert ExpertStore(shared).meta["config"]["train_per_class"] == 20
    saved = json.loads((tmp_path / "b" / "pipeline.json").read_text())
    assert saved["train_per_class"] == 20
