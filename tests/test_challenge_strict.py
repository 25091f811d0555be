"""The strict challenge scorer (each non-official setting refused by name), the combined score
and scores.txt, and the classic protocol's report modes (last / best of periodic / both)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import datadistill.evaluation.protocols as ev
from datadistill.data import DatasetInfo, ImageSet, dataset_info
from datadistill.errors import ConfigError
from datadistill.evaluation.challenge import combined_score, write_scores_txt
from datadistill.evaluation.protocols import evaluate
from test_evaluate import INFO, quadrants  # the same toy quadrant data

C100 = dataset_info("cifar100")


def c100_test(space: str = "normalized", info: DatasetInfo = C100) -> ImageSet:
    return ImageSet(torch.zeros(4, 3, 32, 32), torch.arange(4), info, space)


def submission(ipc: int = 10) -> torch.Tensor:
    return torch.zeros(100 * ipc, 3, 32, 32)


@pytest.fixture
def no_training(monkeypatch):
    calls = []

    def fake(images, labels, test, **kw):
        calls.append(kw)
        return 0.25

    monkeypatch.setattr(ev, "train_and_test", fake)
    return calls


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"epochs": 300}, r"epochs=300 \(official: 1000"),
        ({"num_runs": 5}, r"runs=5 \(official: 3\)"),
        ({"dsa_strategy": "color_crop"}, r"dsa_strategy='color_crop'"),
        ({"dsa_strategy": "none"}, r"dsa_strategy=None"),
        ({"batch_size": 128}, r"batch_size=128 \(official: 256\)"),
        ({"images": submission(5)}, r"ipc=5 \(official: 10\)"),
        ({"test": c100_test("raw")}, r"test set space='raw' \(official: normalized\)"),
        ({"test": c100_test(info=replace(C100, mean=(0.4914, 0.4822, 0.4465)))},
         r"normalisation mean=\(0.4914"),
        ({"test": c100_test(info=replace(C100, name="cifar100_copy"))},
         r"dataset='cifar100_copy' \(official: cifar100 or tiny_imagenet\)"),
    ],
)
def test_strict_challenge_refuses_each_unofficial_setting(no_training, kwargs, match):
    images, test = kwargs.pop("images", submission()), kwargs.pop("test", c100_test())
    with pytest.raises(ConfigError, match=match):
        evaluate(images, None, test, protocol="challenge", **kwargs)
    assert not no_training  # refused before any training
    rep = evaluate(images, None, test, protocol="challenge", unofficial=True, **kwargs)
    assert rep.settings["official"] is False and len(rep.settings["unofficial_settings"]) >= 1


def test_official_settings_pass_and_are_marked_official(no_training):
    rep = evaluate(submission(), None, c100_test(), protocol="challenge")
    assert rep.settings["official"] is True and rep.settings["unofficial_settings"] == []
    assert len(no_training) == 3 and no_training[0]["epochs"] == 1000
    assert no_training[0]["lr"] == 0.01 and no_training[0]["batch_size"] == 256


def test_tiny_imagenet_shape_is_checked(no_training):
    tiny = dataset_info("tiny_imagenet")
    test = ImageSet(torch.zeros(2, 3, 64, 64), torch.arange(2), tiny, "normalized")
    evaluate(torch.zeros(2000, 3, 64, 64), None, test, protocol="challenge")
    with pytest.raises(ConfigError, match=r"ipc=5 \(official: 10\)"):
        evaluate(torch.zeros(1000, 3, 64, 64), None, test, protocol="challenge")


def test_combined_score_and_scores_txt(tmp_path):
    score = combined_score({"cifar100": 0.4061, "tiny_imagenet": 0.1831})
    assert score == pytest.approx((0.4061 + 0.1831) / 2)
    path = write_scores_txt(tmp_path / "out" / "scores.txt", score)
    assert path.read_text() == f"correct: {score}"
    with pytest.raises(ConfigError, match="missing \\['tiny_imagenet'\\]"):
        combined_score({"cifar100": 0.4})


# ----------------------------------------------------------------------------- report modes



def test_report_modes_on_a_toy_run():
    x, y = quadrants(2, seed=0)
    xt, yt = quadrants(10, seed=1)
    test = ImageSet(xt, yt, INFO, "normalized")
    kw = dict(epochs=6, num_runs=2, model_kwargs={"width": 8, "depth": 2}, lr=0.05, seed=3)
    last = evaluate(x, y, test, **kw)
    both = evaluate(x, y, test, report="both", period=2, **kw)
    best = evaluate(x, y, test, report="best_of_periodic", period=2, **kw)
    # Periodic tests leave the training unchanged: the last accuracies agree in every mode.
    assert both.accuracies == last.accuracies == best.settings["last_accuracies"]
    assert both.settings["tested_epochs"] == [2, 4, 6, 7]  # epochs + 1 = 7 trained
    for curve, b in zip(both.settings["curves"], both.settings["best_accuracies"], strict=True):
        assert b == max(curve) and curve[-1] in last.accuracies
    assert best.accuracies == both.settings["best_accuracies"]
    assert best.mean >= last.mean and best.settings["report"] == "best_of_periodic"
    assert last.settings["report"] == "last" and "best_accuracies" not in last.settings
    with pytest.raises(ConfigError, match="report='every'"):
        evaluate(x, y, test, report="every", **kw)
    with pytest.raises(ConfigError, match="test period >= 1"):
        evaluate(x, y, test, report="both", period=0, **kw)
