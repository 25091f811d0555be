"""Evaluation protocols: the classic schedule, seeding, soft labels, the challenge protocol and
cross-architecture evaluation, on tiny 8x8 data."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import datadistill.evaluation.protocols as ev
from datadistill.data import DatasetInfo, ImageSet
from datadistill.errors import CompatibilityError, ConfigError
from datadistill.evaluation.protocols import (
    EvalReport,
    challenge_labels,
    evaluate,
    evaluate_cross,
    soft_cross_entropy,
    test_accuracy,
    train_network,
)
from datadistill.labels import hard_labels
from datadistill.models import create_model

K, H = 4, 8
INFO = DatasetInfo(
    "toy", K, 1, (H, H), (0.5,), (0.25,), ("a", "b", "c", "d"), "color_crop_cutout_scale_rotate"
)
SMALL = {"width": 16, "depth": 2}


def quadrants(n_per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class c lights up quadrant c of an 8x8 image, plus noise: separable but not trivially
    by mean intensity (which instance norm would erase)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(K).repeat_interleave(n_per_class)
    x = 0.3 * torch.randn(labels.numel(), 1, H, H, generator=g)
    for i, c in enumerate(labels.tolist()):
        r, col = divmod(c, 2)
        x[i, :, r * 4 : (r + 1) * 4, col * 4 : (col + 1) * 4] += 2.0
    return x, labels


def toy_test(n_per_class: int = 25) -> ImageSet:
    x, y = quadrants(n_per_class, seed=123)
    return ImageSet(x, y, INFO, "normalized")


def linear_net() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(H * H, K))


# ----------------------------------------------------------------------------- schedule


@pytest.mark.parametrize("epochs", [10, 1000])
def test_schedule_epochs_decay_and_fresh_optimiser(epochs):
    x, y = quadrants(1, seed=0)
    seen: list[tuple[int, float, int, int]] = []

    def hook(epoch: int, opt: torch.optim.Optimizer) -> None:
        seen.append((epoch, opt.param_groups[0]["lr"], id(opt), len(opt.state)))

    train_network(
        linear_net(),
        x,
        y,
        lr=0.5,
        epochs=epochs,
        generator=torch.Generator().manual_seed(0),
        on_epoch=hook,
    )
    assert [s[0] for s in seen] == list(range(epochs + 1))  # epochs + 1 epochs run
    decay = epochs // 2 + 1
    lrs = [s[1] for s in seen]
    assert lrs[: decay + 1] == [0.5] * (decay + 1)  # epochs 0 .. epochs//2+1 at lr
    assert lrs[decay + 1 :] == pytest.approx([0.05] * (epochs - decay))
    ids = [s[2] for s in seen]
    assert len(set(ids[: decay + 1])) == 1 and len(set(ids[decay + 1 :])) == 1
    assert ids[decay] != ids[decay + 1]  # optimiser re-created after epoch epochs//2+1
    assert seen[decay][3] > 0 and seen[decay + 1][3] == 0  # momentum state starts empty again


def test_train_network_rejects_bad_lr():
    x, y = quadrants(1, seed=0)
    with pytest.raises(ConfigError, match="lr must be positive"):
        train_network(linear_net(), x, y, lr=-0.1, epochs=1)


# ----------------------------------------------------------------------------- losses / labels


def test_soft_ce_equals_ce_for_large_margin_one_hot():
    torch.manual_seed(0)
    out = torch.randn(6, K)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    soft = 100.0 * F.one_hot(y, K).float()
    assert torch.allclose(soft_cross_entropy(out, soft), F.cross_entropy(out, y), atol=1e-6)
    assert torch.equal(hard_labels(soft), y) and hard_labels(y) is y


def test_soft_label_training_matches_hard_label_training():
    x, y = quadrants(2, seed=1)  # float64: the same maths, not the CPU's float32 kernels
    x, soft = x.double(), 60.0 * F.one_hot(y, K).double()  # softmax is one-hot in float64
    torch.manual_seed(0)
    a = linear_net().double()
    b = linear_net().double()
    b.load_state_dict(a.state_dict())
    for net, labels in ((a, y), (b, soft)):
        train_network(
            net,
            x,
            labels,
            lr=0.1,
            epochs=6,
            batch_size=3,
            generator=torch.Generator().manual_seed(5),
        )
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.allclose(pa, pb, rtol=1e-10, atol=1e-12)


def test_accuracy_is_a_fraction():
    net = linear_net()
    with torch.no_grad():
        net[1].weight.zero_()
        net[1].bias.copy_(torch.tensor([0.0, 1.0, 0.0, 0.0]))  # always predicts class 1
    x, y = quadrants(5, seed=0)
    assert test_accuracy(net, x, y, batch_size=7) == pytest.approx(0.25)
    assert net.training  # mode restored
    # The CPU channels_last test pass gives the plain forward's answer and restores the layout.
    conv = create_model("convnet", 1, K, (H, H), width=8)
    x, y = quadrants(5, seed=3)
    with torch.no_grad():
        expected = (conv.eval()(x).argmax(1) == y).float().mean().item()
    assert test_accuracy(conv, x, y) == pytest.approx(expected)
    assert all(p.is_contiguous() for p in conv.parameters())


# ----------------------------------------------------------------------------- classic


def test_classic_reaches_high_accuracy_on_separable_set():
    x, y = quadrants(4, seed=0)
    report = evaluate(
        x, y, toy_test(), lr=0.05, epochs=40, num_runs=1, model_kwargs=SMALL, dsa_strategy="none"
    )
    assert report.protocol == "classic" and report.model == "convnet"
    assert report.accuracies[0] >= 0.9
    assert report.settings["epochs_run"] == 41 and report.settings["lr"] == 0.05
    assert report.settings["dsa_strategy"] is None


def test_training_that_diverges_is_an_error_not_chance_accuracy():
    from datadistill.errors import DivergenceError

    x, y = quadrants(4, seed=0)
    with pytest.raises(DivergenceError, match="diverged: the network's weights are NaN"):
        evaluate(x * 1e5, y, toy_test(), lr=1e30, epochs=3, num_runs=1, model_kwargs=SMALL,
                 dsa_strategy="none")


def test_same_seed_same_accuracies_and_global_rng_untouched():
    x, y = quadrants(2, seed=0)
    test = toy_test(10)
    state = torch.get_rng_state()
    kw = {"epochs": 3, "num_runs": 2, "model_kwargs": SMALL, "seed": 7}
    first = evaluate(x, y, test, **kw)
    assert torch.equal(torch.get_rng_state(), state)
    assert evaluate(x, y, test, **kw).accuracies == first.accuracies
    assert first.settings["dsa_strategy"] == INFO.dsa_strategy  # the dataset's, by default
    assert first.settings["lr"] == 0.01 and len(first.accuracies) == 2


def test_report_statistics_and_dict():
    r = EvalReport.from_accuracies("classic", "convnet", [0.5, 0.7], {"epochs": 3})
    assert r.mean == pytest.approx(0.6) and r.std == pytest.approx(0.1)  # ddof 0
    assert r.to_dict()["accuracies"] == [0.5, 0.7] and "60.00 ± 10.00 %" in str(r)


def test_classic_input_checks():
    x, y = quadrants(1, seed=0)
    with pytest.raises(CompatibilityError, match="test set 'toy'"):
        evaluate(torch.zeros(4, 3, H, H), y, toy_test(1))
    with pytest.raises(CompatibilityError, match="labels have shape"):
        evaluate(x, torch.zeros(4, K + 1), toy_test(1))
    with pytest.raises(ConfigError, match="unknown protocol"):
        evaluate(x, y, toy_test(1), protocol="nope")
    with pytest.raises(ConfigError, match="needs labels"):
        evaluate(x, None, toy_test(1))


def test_progress_bar_and_soft_labels_run():
    x, y = quadrants(1, seed=0)
    r = evaluate(
        x, torch.randn(4, K), toy_test(2), epochs=1, num_runs=1, progress=True, model_kwargs=SMALL
    )
    assert r.settings["labels"] == "soft"


# ----------------------------------------------------------------------------- challenge


def _capture(monkeypatch) -> list[dict]:
    calls: list[dict] = []

    def fake(images, labels, test, **kw):
        calls.append({"images": images, "labels": labels, **kw})
        return 0.5

    monkeypatch.setattr(ev, "train_and_test", fake)
    return calls


def test_challenge_protocol(monkeypatch, caplog):
    calls = _capture(monkeypatch)
    x, _ = quadrants(3, seed=0)
    shuffled = torch.arange(K).repeat_interleave(3).flip(0)
    with caplog.at_level(logging.WARNING, logger="datadistill.evaluation.protocols"):
        r = evaluate(x, shuffled, toy_test(1), protocol="challenge", lr=0.3, model="resnet18",
                     unofficial=True)
    assert len(calls) == 3 and r.protocol == "challenge"  # 3 runs by default
    assert torch.equal(calls[0]["labels"], torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]))
    assert calls[0]["lr"] == 0.01 and calls[0]["model"] == "convnet"
    assert calls[0]["model_kwargs"]["depth"] == 3 and r.settings["ipc"] == 3
    assert "labels are ignored" in caplog.text and "lr is fixed" in caplog.text
    assert torch.equal(challenge_labels(2, 2), torch.tensor([0, 0, 1, 1]))
    assert r.settings["official"] is False and "ipc=3 (official: 10)" in str(
        r.settings["unofficial_settings"])
    evaluate(x, None, toy_test(1), protocol="challenge", ipc=3, num_runs=1, unofficial=True)
    with pytest.raises(CompatibilityError, match="ipc 2 x 4 classes = 8"):
        evaluate(x, None, toy_test(1), protocol="challenge", ipc=2, unofficial=True)


def test_cross_architecture(monkeypatch):
    calls = _capture(monkeypatch)
    x, y = quadrants(1, seed=0)
    reports = evaluate_cross(x, y, toy_test(1), models=["convnet", "mlp"], num_runs=2, epochs=1)
    assert list(reports) == ["convnet", "mlp"] and reports["mlp"].model == "mlp"
    assert [c["model"] for c in calls] == ["convnet", "convnet", "mlp", "mlp"]


def test_cross_architecture_checks_every_model_before_training_any(monkeypatch):
    calls = _capture(monkeypatch)
    x, y = quadrants(1, seed=0)
    with pytest.raises(ConfigError, match="lenet cannot take 8x8 images"):
        evaluate_cross(x, y, toy_test(1), models=["convnet", "mlp", "lenet"], num_runs=1,
                       epochs=1)
    assert calls == []  # nothing trained (and lost) before the misfit was found


def test_set_in_another_space_than_the_test_split_is_refused(monkeypatch):
    calls = _capture(monkeypatch)
    x, y = quadrants(1, seed=0)
    normalized, zca = toy_test(1), ImageSet(*quadrants(1, seed=5), INFO, "zca")
    with pytest.raises(CompatibilityError, match="'normalized' space but the test split in 'zca'"):
        evaluate(x, y, zca, space="normalized", num_runs=1, epochs=1)
    with pytest.raises(CompatibilityError, match="'zca' space but the test split in 'normal"):
        evaluate(x, y, normalized, space="zca", num_runs=1, epochs=1)
    with pytest.raises(CompatibilityError, match="images' space is not given; pass space="):
        evaluate(x, y, zca, num_runs=1, epochs=1)  # unrecorded space vs a whitened split
    assert calls == []
    evaluate(x, y, zca, space="zca", num_runs=1, epochs=1)
    evaluate(x, y, normalized, num_runs=1, epochs=1)  # unrecorded: taken as normalised
    assert len(calls) == 2


def test_bad_hard_labels_are_clear_errors():
    from datadistill.data import DatasetInfo, ImageSet
    from datadistill.errors import CompatibilityError

    info = DatasetInfo("toy", 3, 1, (4, 4), (0.5,), (0.5,), ("a", "b", "c"))
    test = ImageSet(torch.zeros(6, 1, 4, 4), torch.zeros(6, dtype=torch.long), info, "raw")
    x = torch.zeros(3, 1, 4, 4)
    with pytest.raises(CompatibilityError, match="integer class indices"):
        evaluate(x, torch.tensor([0.0, 1.0, 2.0]), test, epochs=1, num_runs=1)
    with pytest.raises(CompatibilityError, match="classes 0..2"):
        evaluate(x, torch.tensor([0, 1, 3]), test, epochs=1, num_runs=1)
