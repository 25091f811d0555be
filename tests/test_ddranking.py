"""DD-Ranking protocol: scores per round from known accuracies, the lr search, teacher labels
for the random subset, hard-label variants, the training pieces (losses, mixing, schedules)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import datadistill.evaluation.ddranking as ddr
from datadistill.data import DatasetInfo, ImageSet
from datadistill.errors import CompatibilityError, ConfigError
from datadistill.evaluation.ddranking import (
    _Runner,
    class_order_labels,
    hard_labels_for,
    preset_for,
    score,
    teacher_labels,
)
from datadistill.evaluation.ddranking_train import (
    Curve,
    TrainSpec,
    cutmix,
    make_loss,
    make_optimizer,
    make_scheduler,
    mixup,
)
from test_evaluate import INFO, H, K, quadrants  # the same toy quadrant data

SMALL = {"width": 8, "depth": 2}
E1 = math.exp(-1)


def norm(a: float) -> float:
    return (math.exp(a) - E1) / (math.e - E1)


@dataclass
class Real:
    train: ImageSet
    test: ImageSet
    info: DatasetInfo = INFO


def toy_real() -> Real:
    xt, yt = quadrants(10, seed=1)
    xs, ys = quadrants(5, seed=2)
    return Real(ImageSet(xt, yt, INFO, "normalized"), ImageSet(xs, ys, INFO, "normalized"))


def tiny(method: str, **kw) -> ddr.DDRankingConfig:
    return preset_for(method, model_kwargs=SMALL, **kw)


# ----------------------------------------------------------------------------- metrics


RANDOM_BY_LR = {0.001: 0.20, 0.005: 0.30, 0.01: 0.35, 0.05: 0.40, 0.1: 0.25}


def fake_fit(calls: list, real: Real, syn_x: torch.Tensor):
    """A fit that returns known accuracies by what is trained: the set, the full data or a
    random subset; with or without augmentation; by lr for the random subset."""

    def fit(net, x, y, test, spec, *, seed, augment=True, teachers=(), classes=None,
            device="cpu"):
        calls.append({"x": x, "y": y, "spec": spec, "augment": augment, "teachers": teachers})
        if x.shape[0] == real.train.images.shape[0]:
            acc = 0.90  # full data
        elif torch.equal(x, syn_x):
            acc = 0.60 if augment else 0.50
        else:
            acc = RANDOM_BY_LR[spec.lr] - (0.0 if augment else 0.10)
        return Curve([spec.epochs], [acc])

    return fit


def test_hard_label_metrics_by_hand(monkeypatch):
    real, calls = toy_real(), []
    x, y = quadrants(2, seed=3)
    monkeypatch.setattr(ddr, "train_spec", fake_fit(calls, real, x))
    rep = score(x, y, real, tiny("mtt", rounds=2), syn_lr=0.02)
    hlr, ior = 0.90 - 0.60, 0.60 - 0.40  # random: the best lr of the grid (0.05)
    ars_beta = 0.5 * (0.60 - 0.40) + 0.5 * (0.50 - 0.30)
    for r in rep.rounds:
        assert r["random"].lr == 0.05 and r["syn"].lr == 0.02
        assert r["hlr"] == pytest.approx(hlr) and r["ior"] == pytest.approx(ior)
        assert r["lrs"] == pytest.approx(norm(0.5 * ior - 0.5 * hlr))
        assert r["ars"] == pytest.approx(norm(ars_beta))
    s = rep.summary
    assert s["lrs"]["values"] == pytest.approx([norm(0.5 * ior - 0.5 * hlr)] * 2)  # once/round
    assert s["hlr"]["mean"] == pytest.approx(hlr) and s["ior"]["std"] == pytest.approx(0.0)
    # Per round: syn, 5 random lrs, full, syn no-aug, 5 random no-aug lrs.
    assert len(calls) == 2 * 13
    assert all(not c["augment"] for c in calls if c["x"].shape[0] == 40)  # full: no aug
    assert "LRS" in str(rep) and rep.to_dict()["rounds"][0]["syn"]["lr"] == 0.02


def test_given_full_accuracy_and_lr_weight(monkeypatch):
    real, calls = toy_real(), []
    x, y = quadrants(2, seed=3)
    monkeypatch.setattr(ddr, "train_spec", fake_fit(calls, real, x))
    rep = score(x, y, real, tiny("mtt", rounds=1, ars=False, full_accuracy=0.8, lrs_weight=0.8),
                syn_lr=0.02)
    r = rep.rounds[0]
    assert "full" not in r and "ars" not in r and len(calls) == 6
    assert r["lrs"] == pytest.approx(norm(0.8 * 0.2 - 0.2 * (0.8 - 0.6)))


def test_soft_label_metrics_use_class_order_hard_labels(monkeypatch):
    real, calls = toy_real(), []
    x, _ = quadrants(2, seed=3)
    soft = torch.randn(8, K)  # argmax disagrees with class order in general
    monkeypatch.setattr(ddr, "train_spec", fake_fit(calls, real, x))
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(H * H, K))
    rep = score(x, soft, real, tiny("datm", rounds=1, ars=False), syn_lr=0.02, teachers=teacher)
    r = rep.rounds[0]
    syn_calls = [c for c in calls if torch.equal(c["x"], x)]
    assert len(syn_calls) == 5 + 1  # hard labels: lr searched; own soft labels: the set's lr
    assert torch.equal(syn_calls[0]["y"], class_order_labels(K, 8))
    assert torch.equal(syn_calls[-1]["y"], soft) and syn_calls[-1]["spec"].loss == "sce"
    assert r["syn_hard"].lr == 0.001  # every lr ties at 0.6: the first wins, as DD-Ranking
    assert r["hlr"] == pytest.approx(0.9 - 0.6) and r["ior"] == pytest.approx(0.2)


# ----------------------------------------------------------------------------- lr search


def test_lr_search_picks_the_best_lr_on_a_toy_problem():
    real = toy_real()
    cfg = tiny("mtt", train={"epochs": 4, "step_size": 2, "test_every": 2, "augment": "none"})
    run = _Runner(real, cfg, seed=0, device="cpu")
    x, y = quadrants(3, seed=4)
    found = run.run(x, y, cfg.train, 0, "random", None)
    # The same seeds at each lr alone: the search keeps the lr with the best accuracy.
    alone = {lr: run.train(x, y, cfg.train, lr, 0, "random").best for lr in cfg.lr_grid}
    assert found.lr_search == {repr(lr): pytest.approx(a) for lr, a in alone.items()}
    best = max(alone.values())
    assert found.lr == min(lr for lr, a in alone.items() if a == best)
    assert found.best == best and len(set(alone.values())) > 1  # the lr matters here


def test_search_lr_keeps_first_on_ties():
    out = ddr.search_lr(lambda lr: Curve([1], [0.5]), (0.1, 0.01))
    assert out.lr == 0.1 and out.lr_search == {"0.1": 0.5, "0.01": 0.5}


# ----------------------------------------------------------------------------- labels


def test_soft_random_subset_carries_teacher_labels(monkeypatch):
    real, calls = toy_real(), []
    x, _ = quadrants(2, seed=3)
    monkeypatch.setattr(ddr, "train_spec", fake_fit(calls, real, x))
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(H * H, K))
    score(x, torch.randn(8, K), real, tiny("datm", rounds=1, ars=False), syn_lr=0.02,
          teachers=teacher)
    rdm = [c for c in calls if c["x"].shape[0] == 8 and not torch.equal(c["x"], x)]
    assert len(rdm) == 5
    for c in rdm:  # (N, K) logits of the teacher on the random images themselves
        assert c["y"].shape == (8, K)
        assert torch.allclose(c["y"], teacher_labels([teacher], c["x"]))
        assert c["spec"].loss == "sce" and c["teachers"] == ()
    # The subset holds real training images, 2 per class.
    rows = {tuple(r.flatten().tolist()) for r in real.train.images}
    assert all(tuple(r.flatten().tolist()) in rows for r in rdm[0]["x"])


def test_mode_m_passes_teachers_and_hard_labels(monkeypatch):
    real, calls = toy_real(), []
    x, _ = quadrants(2, seed=3)
    monkeypatch.setattr(ddr, "train_spec", fake_fit(calls, real, x))
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(H * H, K))
    cfg = tiny("sre2l", rounds=1, ars=False, full_accuracy=0.9)
    score(x, torch.randn(8, K), real, cfg, syn_lr=0.001, teachers=teacher)
    online = [c for c in calls if c["teachers"]]
    assert len(online) == 1 + 5  # the set with its own labels, and the random lr search
    assert all(c["y"].dim() == 1 and c["spec"].augment == "mixup" for c in online)


def test_soft_scoring_trains_a_teacher_when_none_is_given(monkeypatch):
    real = toy_real()
    x, _ = quadrants(2, seed=3)
    cfg = tiny("datm", rounds=1, ars=False, full_accuracy=0.9, lr_grid=(0.01,),
               train={"epochs": 1, "test_every": 1}, full={"epochs": 1, "step_size": 1})
    rep = score(x, torch.randn(8, K), real, cfg, syn_lr=0.01)
    assert rep.settings["teacher"].startswith("trained on the full data")


def test_hard_label_variants():
    soft = torch.tensor([[0.0, 5.0], [4.0, 0.0], [0.0, 1.0], [2.0, 0.0]])
    assert torch.equal(hard_labels_for(soft, 2, "class_order"), torch.tensor([0, 0, 1, 1]))
    assert torch.equal(hard_labels_for(soft, 2, "argmax"), torch.tensor([1, 0, 1, 0]))
    hard = torch.tensor([1, 0, 1])
    assert hard_labels_for(hard, 2, "class_order") is hard
    with pytest.raises(CompatibilityError, match="class-major"):
        class_order_labels(2, 3)
    with pytest.raises(ConfigError, match="hard_label_variant"):
        preset_for("mtt", hard_label_variant="first")


def test_bad_inputs_and_presets():
    real = toy_real()
    x, y = quadrants(2, seed=3)
    with pytest.raises(ConfigError, match="no DD-Ranking config for 'nope'"):
        preset_for("nope")
    with pytest.raises(ConfigError, match="needs \\(N, K\\) soft labels"):
        score(x, y, real, tiny("datm"))
    with pytest.raises(CompatibilityError, match="whole number of images per class"):
        score(x[:7], y[:7], real, tiny("mtt"))
    assert preset_for("mtt").train.step_size == 500 and preset_for("mtt").train.epochs == 1000
    assert preset_for("rded").train.augment == "cutmix" and preset_for("rded").train.epochs == 300


# ----------------------------------------------------------------------------- training pieces


def test_losses_by_hand():
    # float64: a check of the formulas, not of the CPU's float32 exp/log kernels
    out, t = torch.randn(3, K, dtype=torch.float64), torch.randn(3, K, dtype=torch.float64)
    y = torch.tensor([0, 2, 1])
    p, logq = F.softmax(t / 4, 1), F.log_softmax(out / 4, 1)
    sce = make_loss(TrainSpec(lr=1, loss="sce", temperature=4))
    assert sce(out, t, y) == pytest.approx(float(-(p * logq).sum() / 3), rel=1e-12)
    kl = make_loss(TrainSpec(lr=1, loss="kl", temperature=4, scale_loss=True))
    assert kl(out, t, y) == pytest.approx(float((p * (p.log() - logq)).sum() / 3 * 16), rel=1e-12)
    mse = make_loss(TrainSpec(lr=1, loss="mse_gt", mse_weight=1.0, ce_weight=0.025))
    expect = F.mse_loss(out, t) + 0.025 * F.cross_entropy(out, y)
    assert mse(out, t, y) == pytest.approx(float(expect), rel=1e-12)
    assert sce(out, y, y) == pytest.approx(float(F.cross_entropy(out, y)), rel=1e-12)


@pytest.mark.parametrize("loss", ["sce", "kl", "mse_gt"])
def test_mixing_the_loss_has_the_gradient_of_the_mixed_target(loss):
    """lam L(t1) + (1 - lam) L(t2) and L on the mixed target give the same student gradient."""
    spec = TrainSpec(lr=1, loss=loss, temperature=2.0)
    fn, lam = make_loss(spec), 0.3
    f64 = torch.float64  # a check of the maths, not of the CPU's float32 kernels
    out = torch.randn(4, K, requires_grad=True, dtype=f64)
    t1, t2, y = torch.randn(4, K, dtype=f64), torch.randn(4, K, dtype=f64), torch.arange(4)
    g_mix = torch.autograd.grad(lam * fn(out, t1, y) + (1 - lam) * fn(out, t2, y), out)[0]
    if loss == "mse_gt":
        target = lam * t1 + (1 - lam) * t2
    else:  # the mixed distribution, as logits at temperature T
        p = lam * F.softmax(t1 / 2, 1) + (1 - lam) * F.softmax(t2 / 2, 1)
        target = 2.0 * p.log()
    g_ref = torch.autograd.grad(fn(out, target, y), out)[0]
    assert torch.allclose(g_mix, g_ref, rtol=1e-10, atol=1e-12)


def test_mixup_and_cutmix_draws():
    import numpy as np

    x = torch.arange(2 * 1 * 8 * 8, dtype=torch.float32).reshape(2, 1, 8, 8)
    gen, rng = torch.Generator().manual_seed(0), np.random.default_rng(0)
    mixed, mix = mixup(x, 0.8, rng, gen)
    assert torch.allclose(mixed, mix.lam * x + (1 - mix.lam) * x[mix.perm])
    for seed in range(5):
        out, mix = cutmix(x, 1.0, np.random.default_rng(seed), torch.Generator().manual_seed(seed))
        kept = (out == x).float().mean().item()
        moved = (out != x).float().mean().item()
        if moved:  # lam is the share of each image left visible
            assert mix.lam == pytest.approx(kept)


def test_step_schedule_keeps_the_optimiser_and_half_cosine():
    net = nn.Linear(2, 2)
    spec = TrainSpec(lr=0.1, step_size=2)
    opt = make_optimizer(spec, net)
    sched = make_scheduler(spec, opt)
    net(torch.ones(1, 2)).sum().backward()
    opt.step()
    buf = opt.state[net.weight]["momentum_buffer"].clone()
    for _ in range(2):
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01)
    assert torch.equal(opt.state[net.weight]["momentum_buffer"], buf)  # momentum kept
    cos = replace(spec, scheduler="cosine", epochs=10)
    opt = make_optimizer(cos, net)
    sched = make_scheduler(cos, opt)
    opt.step()
    for _ in range(10):
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)  # half cosine ends at lr / 2


def test_evaluate_distilled_hard_label_variants(monkeypatch):
    import datadistill.evaluation.protocols as ev

    seen = []
    monkeypatch.setattr(ev, "evaluate", lambda images, labels, test, **kw: seen.append(labels))

    @dataclass
    class Set:
        images: torch.Tensor
        labels: torch.Tensor
        lr: float = 0.01
        ipc: int = 1
        space: str = "normalized"

    soft = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 2.0], [3.0, 0, 0, 0],
                         [0.0, 0, 1.0, 0]])
    ds, test = Set(torch.zeros(4, 1, H, H), soft), toy_real().test
    for variant in (True, "argmax", "class_order", False):
        ev.evaluate_distilled(ds, test, hard_labels=variant)
    assert torch.equal(seen[0], torch.tensor([1, 3, 0, 2])) and torch.equal(seen[0], seen[1])
    assert torch.equal(seen[2], torch.tensor([0, 1, 2, 3])) and seen[3] is soft
    with pytest.raises(ConfigError, match="hard_labels='first'"):
        ev.evaluate_distilled(ds, test, hard_labels="first")


def test_pipeline_reports_ddranking_and_best_of_periodic(tmp_path):
    from datadistill.tm.config import load_pipeline_config
    from datadistill.tm.pipeline import run_pipeline

    cfg = load_pipeline_config("digits/mtt_ipc1", [
        "experts.num_experts=1", "experts.epochs=3", "model_kwargs.width=8",
        "distill.syn_steps=2", "distill.max_start_epoch=1", "distill.iterations=1",
        "distill.eval_runs=0", "evaluation.runs=1", "evaluation.epochs=2",
        "evaluation.random_baseline=false", "evaluation.protocols=[classic,ddranking]",
        "evaluation.report=both", "evaluation.period=1",
        "evaluation.ddranking={lr_grid: [0.01], ars: false, full: {epochs: 1}}",
    ])
    report = run_pipeline(cfg, tmp_path, progress=False)
    classic = report["distilled_convnet"]["settings"]
    assert classic["report"] == "both" and classic["tested_epochs"] == [1, 2, 3]
    ddr = report["ddranking"]
    assert ddr["protocol"] == "ddranking" and len(ddr["rounds"]) == 1
    assert ddr["settings"]["config"]["train"]["epochs"] == 2
    assert ddr["settings"]["config"]["full"]["epochs"] == 1 and "lrs" in ddr["summary"]
    with pytest.raises(ConfigError, match="evaluation.report='every'"):
        load_pipeline_config("digits/mtt_ipc1", ["evaluation.report=every"])


# ----------------------------------------------------------------------------- DD-Ranking's code


def test_full_data_reference_batch_is_ddranking_real_batch_size():
    # DD-Ranking's loader takes real_batch_size (256 in its CIFAR and Tiny ImageNet configs).
    for method in ("mtt", "dc", "datm", "sre2l", "rded"):
        assert preset_for(method).full.batch_size == 256, method


def test_datm_full_data_reference_trains_with_dsa_and_mtt_without(monkeypatch):
    """use_aug_for_hard (DATM's config) augments the full-data reference too; the hard-label
    metric (MTT) never augments it; a teacher trained here is never augmented."""
    real = toy_real()
    x, _ = quadrants(2, seed=3)
    for method, labels, augmented in (("datm", torch.randn(8, K), True),
                                      ("mtt", quadrants(2, seed=3)[1], False)):
        calls: list = []
        monkeypatch.setattr(ddr, "train_spec", fake_fit(calls, real, x))
        score(x, labels, real, tiny(method, rounds=1, ars=False), syn_lr=0.01,
              teachers=nn.Sequential(nn.Flatten(), nn.Linear(H * H, K)))
        full = [c for c in calls if c["x"].shape[0] == 40]
        assert len(full) == 1 and full[0]["augment"] is augmented, method
        assert full[0]["spec"].augment == ("dsa" if augmented else "none")
    calls = []
    monkeypatch.setattr(ddr, "train_spec", fake_fit(calls, real, x))
    score(x, torch.randn(8, K), real, tiny("datm", rounds=1, ars=False, full_accuracy=0.9),
          syn_lr=0.01)  # no teacher given: one is trained on the full data, unaugmented
    assert [c["augment"] for c in calls if c["x"].shape[0] == 40] == [False]


def test_cached_full_accuracy_is_ddranking_s_unless_given_or_training_is_asked(monkeypatch):
    real = toy_real()
    tiny_real = replace(real, info=replace(INFO, name="tiny_imagenet"))
    x, y = quadrants(2, seed=3)
    calls: list = []
    monkeypatch.setattr(ddr, "train_spec", fake_fit(calls, real, x))
    cfg = preset_for("mtt", model="resnet18_bn", rounds=1, ars=False)
    rep = score(x, y, tiny_real, cfg, syn_lr=0.02)
    assert not [c for c in calls if c["x"].shape[0] == 40]  # no full-data training
    assert rep.rounds[0]["hlr"] == pytest.approx(0.464 - 0.60)
    assert "TinyImageNet-ResNet-18-BN: 46.4" in rep.settings["full_accuracy_source"]
    assert ddr.full_accuracy_for(replace(cfg, full_accuracy=0.5), "tiny_imagenet") == (
        0.5, "given")
    assert ddr.full_accuracy_for(replace(cfg, full_from_cache=False), "tiny_imagenet") == (
        None, "trained")
    assert ddr.full_accuracy_for(preset_for("sre2l", model="resnet18_imagenet"),
                                 "imagenet")[0] == 0.565
    assert ddr.full_accuracy_for(cfg, "cifar10") == (None, "trained")  # no cache there
