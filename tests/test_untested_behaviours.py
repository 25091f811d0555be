"""Behaviours that could change without any other test failing: DSA really applied by the
classic evaluation and switched off by DD-Ranking's ``augment=False``, which accuracy HLR and IOR
read, the challenge scorer's exact normalisation and image count, the memory check between the
adjoint and unrolled estimates, the restricted unpickler's allow-list and zero learning rates."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

import datadistill.evaluation.ddranking as ddr
import datadistill.evaluation.ddranking_train as ddt
from datadistill.checks import check_distill
from datadistill.data import DatasetInfo, ImageSet, dataset_info
from datadistill.data.augment import DSA
from datadistill.data.safe_pickle import safe_loads
from datadistill.errors import ConfigError, DatasetError
from datadistill.evaluation.challenge import (
    BATCH_SIZE,
    CIFAR100_MEAN,
    CIFAR100_STD,
    DSA_STRATEGY,
    EPOCHS,
    IPC,
    RUNS,
    ChallengeRun,
    challenge_violations,
)
from datadistill.evaluation.ddranking_train import Curve, TrainSpec, train_spec
from datadistill.evaluation.protocols import evaluate
from datadistill.tm import memory
from datadistill.tm.distill import DistillConfig
from datadistill.tm.memory import Iteration, estimate_config, estimate_memory

K, H = 4, 8
INFO = DatasetInfo(
    "toy", K, 1, (H, H), (0.5,), (0.25,), ("a", "b", "c", "d"), "color_crop_cutout_scale_rotate"
)
SMALL = {"width": 8, "depth": 1}


def toy(n_per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(K).repeat_interleave(n_per_class)
    x = torch.randn(y.numel(), 1, H, H, generator=g)
    return x, y


def toy_test() -> ImageSet:
    x, y = toy(3, seed=1)
    return ImageSet(x, y, INFO, "normalized")


@pytest.fixture
def dsa_calls(monkeypatch) -> list:
    """Every DSA call: (input batch, output batch); DSA itself still runs."""
    calls: list = []
    real_call = DSA.__call__

    def spy(self, x, generator=None):
        out = real_call(self, x, generator=generator)
        calls.append((x.detach().clone(), out.detach().clone()))
        return out

    monkeypatch.setattr(DSA, "__call__", spy)
    return calls


# ----------------------------------------------------------------------------- classic DSA


def test_classic_evaluation_augments_every_training_batch(dsa_calls):
    x, y = toy(2, seed=0)  # 8 images, batches of 4: 2 batches per epoch
    epochs = 3  # the classic loop trains epochs + 1 epochs
    evaluate(x, y, toy_test(), lr=0.01, epochs=epochs, batch_size=4, num_runs=1,
             model_kwargs=SMALL)
    assert len(dsa_calls) == (epochs + 1) * 2
    for inp, out in dsa_calls:
        assert inp.shape == (4, 1, H, H) and out.shape == inp.shape
        assert not torch.equal(inp, out)  # the batch really changed
    seen = torch.cat([inp for inp, _ in dsa_calls[:2]])  # epoch 0: every image once
    assert sorted(seen.flatten(1).sum(1).tolist()) == pytest.approx(
        sorted(x.flatten(1).sum(1).tolist()))


def test_classic_evaluation_without_dsa_never_augments(dsa_calls):
    x, y = toy(2, seed=0)
    evaluate(x, y, toy_test(), lr=0.01, epochs=2, batch_size=4, num_runs=1,
             model_kwargs=SMALL, dsa_strategy="none")
    assert dsa_calls == []


# ----------------------------------------------------------------------------- DD-Ranking


@pytest.mark.parametrize("kind", ["dsa", "mixup", "cutmix"])
def test_ddranking_train_honours_augment_false(kind, dsa_calls, monkeypatch):
    mixed: list = []
    for name in ("mixup", "cutmix"):
        real = getattr(ddt, name)
        monkeypatch.setattr(ddt, name, lambda *a, _r=real, _n=name, **k: (mixed.append(_n),
                                                                         _r(*a, **k))[1])
    x, y = toy(2, seed=0)
    spec = TrainSpec(lr=0.01, epochs=2, batch_size=4, augment=kind, test_every=2)

    def train(augment: bool) -> int:
        dsa_calls.clear()
        mixed.clear()
        net = nn.Sequential(nn.Flatten(), nn.Linear(H * H, K))
        train_spec(net, x, y, toy_test(), spec, seed=0, augment=augment)
        return len(dsa_calls) + len(mixed)

    assert train(True) == 2 * 2  # every batch of every epoch
    assert train(False) == 0


@dataclass
class Real:
    train: ImageSet
    test: ImageSet
    info: DatasetInfo = INFO


def test_hlr_reads_the_hard_label_accuracy_and_ior_the_soft_label_one(monkeypatch):
    xt, yt = toy(10, seed=1)
    real = Real(ImageSet(xt, yt, INFO, "normalized"), toy_test())
    x, _ = toy(2, seed=3)
    soft = torch.randn(8, K)

    def fake(net, xs, ys, test, spec, *, seed, augment=True, teachers=(), classes=None,
             device="cpu"):
        if xs.shape[0] == xt.shape[0]:
            acc = 0.90  # full data
        elif torch.equal(xs, x):
            acc = 0.55 if ys.dim() == 1 else 0.75  # the set: hard vs its own soft labels
        else:
            acc = 0.30  # random subset
        return Curve([spec.epochs], [acc])

    monkeypatch.setattr(ddr, "train_spec", fake)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(H * H, K))
    cfg = ddr.preset_for("datm", rounds=1, ars=False, model_kwargs=SMALL)
    r = ddr.score(x, soft, real, cfg, syn_lr=0.02, teachers=teacher).rounds[0]
    assert r["hlr"] == pytest.approx(0.90 - 0.55)
    assert r["ior"] == pytest.approx(0.75 - 0.30)


# ----------------------------------------------------------------------------- challenge


def _violations(**over) -> list[str]:
    kw = dict(shape=(1000, 3, 32, 32), dataset="cifar100", space="normalized", ipc=IPC,
              epochs=EPOCHS, num_runs=RUNS, dsa_strategy=DSA_STRATEGY, batch_size=BATCH_SIZE,
              mean=CIFAR100_MEAN, std=CIFAR100_STD)
    kw.update(over)
    shape, dataset, space = kw.pop("shape"), kw.pop("dataset"), kw.pop("space")
    mean, std = kw.pop("mean"), kw.pop("std")
    return challenge_violations(shape, dataset, space, ChallengeRun(**kw), mean=mean, std=std)


def test_challenge_official_settings_have_no_violation():
    assert _violations() == []


@pytest.mark.parametrize("which", ["mean", "std"])
def test_challenge_refuses_a_normalisation_close_to_the_official_one(which):
    official = {"mean": CIFAR100_MEAN, "std": CIFAR100_STD}[which]
    rounded = tuple(round(v, 3) for v in official)  # e.g. 0.5071 -> 0.507
    assert rounded != tuple(official)
    out = _violations(**{which: rounded})
    assert len(out) == 1 and out[0].startswith("normalisation")
    assert _violations(**{which: tuple(v + 1e-4 for v in official)})[0].startswith(
        "normalisation")


def test_challenge_reports_a_wrong_image_count_by_itself():
    out = _violations(shape=(999, 3, 32, 32))
    assert len(out) == 1
    assert "images shape=(999, 3, 32, 32)" in out[0] and "(1000, 3, 32, 32)" in out[0]


# ----------------------------------------------------------------------------- memory


def test_check_memory_between_adjoint_and_unrolled(monkeypatch):
    unrolled = DistillConfig.of(dataset="digits", ipc=1, syn_steps=20)
    adjoint = DistillConfig.of(dataset="digits", ipc=1, syn_steps=20, grad_mode="adjoint")
    info = dataset_info("digits")
    est = estimate_config(unrolled, info)
    need_adjoint = estimate_memory(
        est.footprint, Iteration(mode="adjoint", num_images=10, syn_steps=20, micro_batch=10,
        real_images=1437 + 360, snapshots=unrolled.grad.snapshots)).total
    assert need_adjoint < est.unrolled.total
    free = (need_adjoint + est.unrolled.total) // 2
    monkeypatch.setattr(memory, "free_memory", lambda device: free)
    with pytest.raises(ConfigError, match="grad_mode=adjoint"):
        memory.check_memory(unrolled)
    memory.check_memory(adjoint)  # admitted: no error
    monkeypatch.setattr(memory, "free_memory", lambda device: est.unrolled.total)
    memory.check_memory(unrolled)  # the unrolled graph fits exactly


# ----------------------------------------------------------------------------- safe pickle


def _calls(module: str, name: str, opcode: str) -> bytes:
    """A pickle that calls ``module.name()`` (how a malicious batch runs code), found by the
    GLOBAL opcode (protocols 0-3) or STACK_GLOBAL (protocol 4+)."""
    if opcode == "GLOBAL":
        return f"c{module}\n{name}\n)R.".encode()
    unicode = b"".join(b"\x8c" + bytes([len(s)]) + s.encode() for s in (module, name))
    return b"\x80\x04" + unicode + b"\x93)R."


@pytest.mark.parametrize("opcode", ["GLOBAL", "STACK_GLOBAL"])
@pytest.mark.parametrize("module, name", [
    ("builtins", "getattr"), ("os", "system"), ("posix", "system"), ("builtins", "eval"),
    ("builtins", "exec"), ("builtins", "__import__"), ("subprocess", "Popen"),
    ("io", "open"), ("pickle", "loads"), ("numpy", "load"), ("torch", "load"),
    ("numpy.core.multiarray", "array"), ("builtins", "object"),
])
def test_restricted_unpickler_refuses_globals_outside_its_allow_list(module, name, opcode):
    with pytest.raises(DatasetError, match=rf"asks for {module}\.{name}, .*refused as unsafe"):
        safe_loads(_calls(module, name, opcode), "batch")


# ----------------------------------------------------------------------------- zero lrs


@pytest.mark.parametrize("key, over", [
    ("distill.lr_img", {"lr_img": 0.0}),
    ("distill.lr_y", {"lr_y": 0.0, "label_mode": "soft"}),
    ("distill.lr_lr", {"lr_lr": -1e-5}),
])
def test_zero_or_negative_learning_rates_are_refused_naming_the_key(key, over):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.") + " must be"):
        check_distill(DistillConfig.of(dataset="digits", ipc=1, **over))


def test_lr_lr_zero_is_a_fixed_step_size():
    check_distill(DistillConfig.of(dataset="digits", ipc=1, lr_lr=0.0))  # admitted


# ----------------------------------------------------------------------------- messages


def test_did_you_mean_keeps_the_section(capsys):
    from datadistill.cli import main

    assert main(["validate", "digits/mtt_ipc1", "distill.iteratons=5"]) == 2
    assert "Did you mean 'distill.iterations'?" in capsys.readouterr().err


def test_did_you_mean_names_the_section_of_a_key_given_without_it(capsys):
    from datadistill.cli import main

    assert main(["validate", "digits/mtt_ipc1", "iterations=5"]) == 2
    assert "Did you mean 'distill.iterations'?" in capsys.readouterr().err
    assert main(["validate", "digits/mtt_ipc1", "ipcc=5"]) == 2
    assert "Did you mean 'ipc'?" in capsys.readouterr().err
