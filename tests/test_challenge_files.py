"""`datadistill challenge` and `eval --protocol challenge`: what a submission file may hold,
both files checked before any training, finished runs kept, and the notes they print."""

from __future__ import annotations

import json
import re
import types

import pytest
import torch

import datadistill.data as data_mod
import datadistill.evaluation.protocols as ev
from datadistill.artifacts.distilled import DistilledSet, save_distilled
from datadistill.cli import main
from datadistill.data import ImageSet, create_dataset, dataset_info
from datadistill.evaluation.commands import CHALLENGE_RUNS

SHAPES = {"cifar100.pt": (1000, 3, 32, 32), "tinyimagenet.pt": (2000, 3, 64, 64)}


@pytest.fixture
def fake(monkeypatch):
    """No data files and no training: each network 'trains' in no time; calls are recorded."""
    calls: list[tuple[int, torch.dtype]] = []

    def fake_prepare(name, root=None, download=False):
        info = dataset_info(name)
        side = info.image_size[0]
        test = ImageSet(torch.zeros(2, 3, side, side), torch.arange(2), info, "normalized")
        return types.SimpleNamespace(test=test, info=info)

    def train(x, y, test, **kw):
        calls.append((x.shape[-1], x.dtype))
        return {32: 0.40, 64: 0.20}[x.shape[-1]]

    monkeypatch.setattr(data_mod, "prepare", fake_prepare)
    monkeypatch.setattr(ev, "train_and_test", train)
    return calls


def _submit(folder, dtype=torch.float32, skip=(), **content):
    folder.mkdir(exist_ok=True)
    for name, shape in SHAPES.items():
        if name not in skip:
            torch.save(content.get(name, torch.zeros(shape).to(dtype)), folder / name)
    return folder


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64, torch.uint8, torch.int64,
                                   torch.bfloat16])
def test_what_the_official_scorer_casts_with_float_is_accepted(tmp_path, fake, dtype):
    sub = _submit(tmp_path / "sub", dtype)
    assert main(["challenge", str(sub), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    assert [c[1] for c in fake] == [torch.float32] * 6  # cast as .float() does, then trained
    assert (tmp_path / "o" / "scores.txt").read_text() == f"correct: {(0.40 + 0.20) / 2}"


@pytest.mark.parametrize(("content", "match"), [
    ({"images": torch.zeros(1000, 3, 32, 32), "labels": torch.zeros(1000)},
     r"holds a dict \(keys 'images', 'labels'\), not a tensor; the challenge takes one tensor "
     r"of images"),
    ((torch.zeros(1000, 3, 32, 32), torch.zeros(1000, 100)),
     r"holds a tuple of 2 items, not a tensor; .*soft labels are not scored"),
    (torch.zeros(1000, 3, 32, 32, dtype=torch.complex64), r"complex64 tensor; .*real numbers"),
    (torch.zeros(1000, 3, 32, 32, dtype=torch.bool), r"torch.bool tensor"),
    (torch.zeros(1000, 3 * 32 * 32), r"shape \(1000, 3072\); the challenge takes one tensor"),
])
def test_other_content_is_one_error_line_before_any_training(tmp_path, fake, capsys, content,
                                                             match):
    sub = _submit(tmp_path / "sub", **{"cifar100.pt": content})
    assert main(["challenge", str(sub), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "cifar100.pt" in err
    assert re.search(match, err), err
    assert fake == []


def test_a_missing_tinyimagenet_file_is_found_before_cifar100_is_trained(tmp_path, fake,
                                                                        capsys):
    sub = _submit(tmp_path / "sub", skip=("tinyimagenet.pt",))
    assert main(["challenge", str(sub), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "holds no tinyimagenet.pt" in err and err.count("error:") == 1
    assert fake == []


def test_an_unofficial_tinyimagenet_file_is_refused_before_cifar100_is_trained(tmp_path, fake,
                                                                               capsys):
    sub = _submit(tmp_path / "sub", **{"tinyimagenet.pt": torch.zeros(1000, 3, 64, 64)})
    assert main(["challenge", str(sub), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "tinyimagenet.pt: ipc=5 (official: 10)" in capsys.readouterr().err
    assert fake == []


def test_an_interrupted_challenge_keeps_each_finished_run_and_resumes(tmp_path, fake,
                                                                      monkeypatch, capsys):
    sub = _submit(tmp_path / "sub")
    out = tmp_path / "o"

    def interrupted(x, y, test, **kw):
        if x.shape[-1] == 64 and kw["run"] == 1:
            raise KeyboardInterrupt  # Ctrl-C during Tiny ImageNet's second network
        fake.append((x.shape[-1], x.dtype))
        return {32: 0.40, 64: 0.20}[x.shape[-1]]

    monkeypatch.setattr(ev, "train_and_test", interrupted)
    assert main(["challenge", str(sub), "--out", str(out), "--quiet"]) == 130
    err = capsys.readouterr().err
    assert "rerun the same command to resume" in err and "--restart" not in err
    assert [c[0] for c in fake] == [32, 32, 32, 64]
    fake.clear()
    monkeypatch.setattr(ev, "train_and_test", lambda x, y, test, **kw: (
        fake.append((x.shape[-1], x.dtype)), {32: 0.40, 64: 0.20}[x.shape[-1]])[1])
    assert main(["challenge", str(sub), "--out", str(out), "--quiet"]) == 0
    assert [c[0] for c in fake] == [64, 64]  # CIFAR-100 and Tiny's first run were kept
    assert (out / CHALLENGE_RUNS).is_file()
    assert json.loads((out / "challenge.json").read_text())["cifar100"]["accuracies"] == [
        0.40] * 3


def test_soft_labels_under_the_challenge_protocol_are_named_as_replaced(tmp_path, capsys):
    train = create_dataset("digits", split="train")
    x = train.images[:10]
    soft = torch.randn(10, 10)
    ds = DistilledSet(images=x, labels=soft, lr=0.01, info=train.info, space="normalized",
                      ipc=1, method="datm")
    path = save_distilled(ds, tmp_path / "set")
    assert main(["eval", str(path), "--protocol", "challenge", "--epochs", "1", "--runs", "1",
                 "--unofficial", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "note: the set's soft labels are not used: the challenge trains on class-order" in out
    report = json.loads((path / "eval.json").read_text())
    settings = report["convnet_challenge"]["settings"]  # one key per protocol
    assert "class-order hard labels" in settings["labels_replaced"]
