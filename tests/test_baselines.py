"""Baselines: random class-balanced subsets and the full-data reference."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import datadistill.evaluation.baselines as bl
from datadistill.data import DatasetInfo, ImageSet
from datadistill.errors import ConfigError
from datadistill.evaluation.baselines import baseline_full, baseline_random, random_subset

K = 3
INFO = DatasetInfo("toy", K, 1, (4, 4), (0.5,), (0.25,), ("cat", "dog", "emu"))


def toy_train(counts=(5, 6, 2)) -> ImageSet:
    """Image i is filled with the value i, so a pick can be traced back to its index."""
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    labels = labels[torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(0))]
    images = torch.arange(labels.numel(), dtype=torch.float32).view(-1, 1, 1, 1)
    return ImageSet(images.expand(-1, 1, 4, 4).clone(), labels, INFO, "normalized")


def toy_real() -> SimpleNamespace:
    return SimpleNamespace(
        train=toy_train((4, 4, 4)), test=toy_train((2, 2, 2)), info=INFO, zca=None
    )


def test_random_subset_is_class_major_and_from_the_right_class():
    train = toy_train()
    x, y = random_subset(train, 2, torch.Generator().manual_seed(1))
    assert torch.equal(y, torch.tensor([0, 0, 1, 1, 2, 2]))
    source = x[:, 0, 0, 0].long()  # the training index each pick came from
    assert torch.equal(train.labels[source], y)
    assert source.unique().numel() == 6  # no repeats within a class
    again, _ = random_subset(train, 2, torch.Generator().manual_seed(1))
    assert torch.equal(again, x)


def test_random_subset_errors_name_the_class():
    with pytest.raises(ConfigError, match=r"class 2 \('emu'\) has only 2 .* ipc=3"):
        random_subset(toy_train(), 3)
    with pytest.raises(ConfigError, match="ipc must be >= 1"):
        random_subset(toy_train(), 0)


def test_baseline_random_draws_a_fresh_subset_per_run(monkeypatch):
    calls = []

    def fake(images, labels, test, **kw):
        calls.append((images, labels, kw))
        return 0.25 * len(calls)

    monkeypatch.setattr(bl, "train_and_test", fake)
    r = baseline_random(toy_real(), 2, num_runs=3, epochs=7)
    assert r.protocol == "random" and r.accuracies == [0.25, 0.5, 0.75]
    assert r.settings["ipc"] == 2 and r.settings["epochs_run"] == 8
    assert all(kw["lr"] == 0.01 and kw["run"] == i for i, (_, _, kw) in enumerate(calls))
    assert not torch.equal(calls[0][0], calls[1][0])  # different subsets
    assert all(torch.equal(c[1], torch.tensor([0, 0, 1, 1, 2, 2])) for c in calls)


def test_baselines_train_for_real():
    real = toy_real()
    small = {"width": 8, "depth": 2}  # 4x4 images: two pools reach 1x1
    r = baseline_random(real, 1, num_runs=1, epochs=1, model_kwargs=small)
    assert 0.0 <= r.accuracies[0] <= 1.0
    full = baseline_full(real, epochs=2, model_kwargs=small)
    assert full.protocol == "full" and len(full.accuracies) == 1
    assert full.settings["epochs"] == 2 and full.settings["epochs_run"] == 3
    assert full.settings["n_images"] == 12 and full.settings["dsa_strategy"] == INFO.dsa_strategy
    plain = baseline_full(real, epochs=0, dsa=False, model_kwargs=small)
    assert plain.settings["dsa_strategy"] is None


def test_baseline_random_by_dataset_name():
    r = baseline_random("digits", 1, num_runs=1, epochs=1, model_kwargs={"width": 8})
    assert r.settings["dataset"] == "digits" and r.settings["ipc"] == 1
    assert r.settings["dsa_strategy"] == "color_crop_cutout_scale_rotate"  # digits: no flip


def test_bad_dataset_argument():
    with pytest.raises(ConfigError, match="dataset name or the result"):
        baseline_random(42, 1)
