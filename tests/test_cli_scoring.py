"""CLI: `score` (DD-Ranking), `eval --report`, and the strict challenge protocol's refusals."""

import json

import pytest
import torch

from datadistill.artifacts.distilled import DistilledSet, save_distilled
from datadistill.cli import main
from datadistill.data import create_dataset
from datadistill.evaluation.baselines import random_subset


@pytest.fixture(scope="module")
def digits_set():
    train = create_dataset("digits", split="train")
    x, y = random_subset(train, 1, generator=torch.Generator().manual_seed(0))
    return DistilledSet(images=x, labels=y, lr=0.01, info=train.info, space="normalized",
                        ipc=1, method="mtt")


def test_score_writes_a_ddranking_report(tmp_path, digits_set, capsys):
    path = save_distilled(digits_set, tmp_path / "set")
    code = main(["score", str(path), "--epochs", "2", "--runs", "2", "--full-epochs", "1",
                 "--no-ars", "--quiet"])
    assert code == 0
    report = json.loads((path / "ddranking.json").read_text())
    assert report["protocol"] == "ddranking" and len(report["rounds"]) == 2
    table = (path / "report.html").read_text().split('id="accuracy"')[1].split("</table>")[0]
    shown = [w for k, w in (("syn", "evaluated set, its labels"),
                            ("syn_hard", "evaluated set, hard labels"),
                            ("random", "random real subset"), ("full", "full training set"))
             if k in report["summary"]]
    assert table.count(">ddranking<") == len(shown) >= 2
    assert all(f"<td>{w}</td>" in table for w in shown)
    r = report["rounds"][0]
    assert r["syn"]["lr"] == pytest.approx(0.01) and r["random"]["lr"] in [0.001, 0.005, 0.01,
                                                                            0.05, 0.1]
    assert set(r["random"]["lr_search"]) == {"0.001", "0.005", "0.01", "0.05", "0.1"}
    assert report["settings"]["config"]["train"]["step_size"] == 1  # half of --epochs
    assert "LRS" in capsys.readouterr().out


def test_eval_report_both(tmp_path, digits_set, capsys):
    path = save_distilled(digits_set, tmp_path / "set")
    code = main(["eval", str(path), "--epochs", "4", "--runs", "1", "--report", "both",
                 "--period", "2", "--quiet"])
    assert code == 0
    rep = json.loads((path / "eval.json").read_text())["convnet"]
    assert rep["settings"]["tested_epochs"] == [2, 4, 5]
    assert "best of tests every 2 epochs" in capsys.readouterr().out


def test_eval_challenge_is_strict_unless_unofficial(tmp_path, digits_set, capsys):
    path = save_distilled(digits_set, tmp_path / "set")
    code = main(["eval", str(path), "--protocol", "challenge", "--epochs", "1", "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert "dataset='digits'" in err and "epochs=1" in err and "--unofficial" in err
    code = main(["eval", str(path), "--protocol", "challenge", "--epochs", "1", "--runs", "1",
                 "--unofficial", "--quiet"])
    assert code == 0 and "UNOFFICIAL" in capsys.readouterr().out


def test_challenge_command_writes_scores_txt(tmp_path, monkeypatch, capsys):
    import types

    import datadistill.data as data_mod
    import datadistill.evaluation.protocols as ev
    from datadistill.data import ImageSet, dataset_info

    def fake_prepare(name, root=None, download=False):
        info = dataset_info(name)
        side = info.image_size[0]
        test = ImageSet(torch.zeros(2, 3, side, side), torch.arange(2), info, "normalized")
        return types.SimpleNamespace(test=test, info=info)

    accs = {32: 0.40, 64: 0.20}  # by resolution: CIFAR-100, Tiny ImageNet
    monkeypatch.setattr(data_mod, "prepare", fake_prepare)
    monkeypatch.setattr(ev, "train_and_test", lambda x, y, test, **kw: accs[x.shape[-1]])
    sub = tmp_path / "sub"
    sub.mkdir()
    torch.save(torch.zeros(1000, 3, 32, 32), sub / "cifar100.pt")
    torch.save(torch.zeros(2000, 3, 64, 64), sub / "tinyimagenet.pt")
    assert main(["challenge", str(sub), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    assert (tmp_path / "o" / "scores.txt").read_text() == f"correct: {(0.40 + 0.20) / 2}"
    report = json.loads((tmp_path / "o" / "challenge.json").read_text())
    assert report["official"] is True and report["cifar100"]["settings"]["num_runs"] == 3
    code = main(["challenge", str(sub), "--epochs", "10", "--out", str(tmp_path / "o"),
                 "--quiet"])
    assert code == 2 and "epochs=10 (official: 1000" in capsys.readouterr().err


def test_score_train_full_turns_ddranking_s_cached_accuracy_off():
    from types import SimpleNamespace

    from datadistill.cli import build_parser, parse_args
    from datadistill.evaluation.commands import _ddranking_config

    ds = SimpleNamespace(method="sre2l")
    for argv, cached in ((["score", "set"], True), (["score", "set", "--train-full"], False)):
        assert _ddranking_config(parse_args(build_parser(), argv), ds).full_from_cache is cached
