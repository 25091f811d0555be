"""One tiny run per CLI command and per ``eval`` option: outputs, exit codes, error paths.

Everything runs on the embedded 8x8 digits with a handful of images, one or two epochs and
narrow networks, so each command finishes in about a second.
"""

from __future__ import annotations

import json

import pytest
import torch

from datadistill.artifacts.distilled import DistilledSet, save_distilled
from datadistill.artifacts.legacy import export_legacy
from datadistill.cli import main
from datadistill.data import create_dataset, dataset_info, random_subset
from datadistill.experts import ExpertStore
from datadistill.experts.train import ExpertConfig
from datadistill.training import build_model

TINY_EXPERTS = ["train_per_class=20", "model_kwargs.width=8", "experts.num_experts=2",
                "experts.epochs=3", "experts.batch_size=64", "distill.max_start_epoch=1"]
TINY_DISTILL = ["distill.syn_steps=2", "distill.max_start_epoch=1", "distill.iterations=2",
                "distill.eval_every=2", "distill.eval_runs=0"]


@pytest.fixture(scope="module")
def train():
    return create_dataset("digits", split="train")


@pytest.fixture(scope="module")
def hard_set(train):
    x, y = random_subset(train, 1, generator=torch.Generator().manual_seed(0))
    return DistilledSet(images=x, labels=y, lr=0.05, info=train.info, space="normalized",
                        ipc=1, method="random")


def _eval(path, *extra):
    return main(["eval", str(path), "--epochs", "1", "--runs", "1", "--quiet", *extra])


def _report(path):
    return json.loads((path / "eval.json").read_text())


# ----------------------------------------------------------------------------- configs, validate


def test_validate_applies_its_overrides(capsys):
    assert main(["validate", "digits/mtt_ipc1"]) == 0
    assert "(mtt, digits, IPC 1)" in capsys.readouterr().out
    assert main(["validate", "digits/mtt_ipc1", "ipc=3", "method=datm"]) == 0
    assert "(datm, digits, IPC 3)" in capsys.readouterr().out
    assert main(["validate", "digits/infer_ipc10", "ipc=20"]) == 0
    assert "valid (infer, digits, IPC 20)" in capsys.readouterr().out


def test_validate_reports_bad_overrides(capsys):
    assert main(["validate", "digits/mtt_ipc1", "distill.iteratons=3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "distill.iteratons" in err and "iterations" in err
    assert main(["validate", "digits/mtt_ipc1", "distill.syn_steps=0"]) == 2
    assert "distill.syn_steps must be >= 1" in capsys.readouterr().err
    assert main(["validate", "digits/infer_ipc10", "ipc=0"]) == 2
    assert "ipc" in capsys.readouterr().err


def test_configs_ls_show_cp_and_overwrite(tmp_path, capsys):
    assert main(["configs", "ls"]) == 0
    names = capsys.readouterr().out.split()
    assert {"digits/mtt_ipc1", "digits/infer_ipc10", "cifar10/datm_ipc10"} <= set(names)
    assert main(["configs", "show", "digits/mtt_ipc1"]) == 0
    assert "syn_steps: 20" in capsys.readouterr().out
    dest = tmp_path / "mine.yaml"
    assert main(["configs", "cp", "digits/mtt_ipc1", str(dest)]) == 0
    assert dest.read_text().startswith("# ") and "lr_img: 100" in dest.read_text()
    dest.write_text("edited\n")
    assert main(["configs", "cp", "digits/mtt_ipc1", str(dest)]) == 2
    assert "--force" in capsys.readouterr().err and dest.read_text() == "edited\n"
    assert main(["configs", "cp", "digits/mtt_ipc1", str(dest), "--force"]) == 0
    assert "lr_img: 100" in dest.read_text()
    assert main(["validate", str(dest), "ipc=2"]) == 0  # a copied file validates by path
    assert "IPC 2" in capsys.readouterr().out


def test_presets_lists_every_method_and_its_paper(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for method in ("mtt", "ftd", "datm", "mdatm", "pad"):
        assert method in out
    assert "Cazenavette" in out and "Guo" in out


# ----------------------------------------------------------------------------- experts, distill


@pytest.fixture(scope="module")
def expert_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "store"
    assert main(["experts", "digits/mtt_ipc1", *TINY_EXPERTS, "--experts", str(out),
                 "--quiet"]) == 0
    return out


def test_experts_command_writes_the_store(expert_dir, capsys):
    store = ExpertStore(expert_dir)
    assert len(store) == 2 and store.epochs == 3
    assert store.meta["config"]["train_per_class"] == 20
    assert store.meta["model_kwargs"] == {"width": 8}
    assert main(["experts", "digits/mtt_ipc1", *TINY_EXPERTS, "--experts", str(expert_dir),
                 "--quiet"]) == 0  # finished: nothing retrained
    assert f"2 experts in {expert_dir}" in capsys.readouterr().out


def test_distill_uses_the_given_experts_and_restarts_on_request(expert_dir, tmp_path, capsys):
    config = ["digits/mtt_ipc1", *TINY_EXPERTS, *TINY_DISTILL]
    options = ["--out", str(tmp_path), "--experts", str(expert_dir), "--quiet"]
    assert main(["distill", *config, *options]) == 0
    out = capsys.readouterr().out
    assert "2 iterations" in out and f"best set: {tmp_path / 'distill' / 'best'}" in out
    written = json.loads((tmp_path / "distill" / "config.json").read_text())
    assert written["expert_dir"] == str(expert_dir) and written["iterations"] == 2
    assert not (tmp_path / "experts").exists()
    changed = ["distill", *config, "distill.lr_img=5", *options]
    assert main(changed) == 2  # the checkpoint was written with lr_img 100
    err = capsys.readouterr().err
    assert "lr_img" in err and "resume=False" in err
    assert main([*changed, "--restart"]) == 0
    written = json.loads((tmp_path / "distill" / "config.json").read_text())
    assert written["lr_img"] == 5


def test_distill_without_experts_is_a_clean_error(tmp_path, capsys):
    code = main(["distill", "digits/mtt_ipc1", *TINY_DISTILL, "--out", str(tmp_path),
                 "--experts", str(tmp_path / "none"), "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert "meta.json not found" in err and "datadistill experts" in err and "--experts" in err
    assert not (tmp_path / "distill" / "best").exists()


def test_import_buffers(tmp_path, capsys):
    info = dataset_info("digits")
    cfg = ExpertConfig(dataset="digits")  # the command imports the default ConvNet
    experts = []  # official layout: [expert][epoch][tensor in parameters() order]
    for e in range(2):
        net = build_model(cfg, info, init_seed=e)
        experts.append([[p.detach().clone() + k for p in net.parameters()] for k in range(3)])
    torch.save(experts, tmp_path / "replay_buffer_0.pt")
    out = tmp_path / "store"
    code = main(["import-buffers", str(tmp_path / "replay_buffer_0.pt"), "--out", str(out),
                 "--dataset", "digits"])
    assert code == 0 and f"imported 2 experts into {out}" in capsys.readouterr().out
    store = ExpertStore(out)
    assert len(store) == 2 and store.epochs == 2 and store.meta["zca"] is False
    flat = torch.cat([t.reshape(-1) for t in experts[1][2]])
    assert torch.equal(store.load(1)[2], flat)
    code = main(["import-buffers", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "x"),
                 "--dataset", "digits"])
    assert code == 2 and "missing.pt" in capsys.readouterr().err


# ----------------------------------------------------------------------------- INFER


INFER_TINY = ["teachers.archs=[shufflenet_g2]", "teachers.width_mult=0.125", "teachers.epochs=1",
              "train_per_class=20", "iterations=2", "student.epochs=1",
              "student.model_kwargs.width_mult=0.125", "student.eval_every=1"]


def test_teachers_then_infer(tmp_path, capsys, monkeypatch):
    made = []
    real = torch.optim.SGD

    class SpySGD(real):  # records the teachers' optimiser as built
        def __init__(self, params, **kw):
            super().__init__(params, **kw)
            made.append(self.param_groups[0])

    monkeypatch.setattr(torch.optim, "SGD", SpySGD)
    teachers = tmp_path / "teachers"
    code = main(["teachers", "digits/infer_ipc10", *INFER_TINY, "--out", str(teachers),
                 "--quiet"])
    assert code == 0
    (group,) = made  # DWA's squeeze recipe: SGD lr 0.1, momentum 0.9, wd 5e-4, cosine to 0
    assert (group["initial_lr"], group["momentum"], group["weight_decay"]) == (0.1, 0.9, 5e-4)
    assert group["lr"] == pytest.approx(0.0, abs=1e-12)  # after its 1 epoch
    monkeypatch.undo()
    assert "shufflenet_g2: test accuracy" in capsys.readouterr().out
    assert (teachers / "shufflenet_g2").is_dir()
    out = tmp_path / "set"
    code = main(["infer", "digits/infer_ipc10", *INFER_TINY, f"teacher_dir={teachers}",
                 "--out", str(out), "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "INFER student" in printed and f"set written to {out}" in printed
    report = json.loads((out / "eval_infer.json").read_text())
    assert report["protocol"] == "infer_static" and len(report["accuracies"]) == 1


def test_infer_without_teachers_is_a_clean_error(tmp_path, capsys):
    code = main(["infer", "digits/infer_ipc10", *INFER_TINY, f"teacher_dir={tmp_path / 'no'}",
                 "--out", str(tmp_path / "set"), "--quiet"])
    assert code == 2
    assert "teacher" in capsys.readouterr().err


# ----------------------------------------------------------------------------- eval options


def test_eval_default_uses_the_sets_lr_and_lr_overrides_it(tmp_path, hard_set):
    path = save_distilled(hard_set, tmp_path / "set")
    assert _eval(path) == 0
    assert _report(path)["convnet"]["settings"]["lr"] == pytest.approx(0.05)
    assert _eval(path, "--lr", "0.02") == 0
    rep = _report(path)["convnet"]
    assert rep["settings"]["lr"] == pytest.approx(0.02) and rep["protocol"] == "classic"


def test_eval_challenge_protocol(tmp_path, hard_set):
    path = save_distilled(hard_set, tmp_path / "set")
    assert _eval(path, "--protocol", "challenge") == 2  # digits, IPC 1: not the official setting
    assert _eval(path, "--protocol", "challenge", "--unofficial") == 0
    rep = _report(path)["convnet_challenge"]
    assert rep["protocol"] == "challenge" and rep["settings"]["official"] is False
    assert rep["settings"]["lr"] == 0.01 and rep["settings"]["model_kwargs"]["depth"] == 3


def test_eval_keeps_every_protocol_and_shows_them_side_by_side(tmp_path, hard_set):
    path = save_distilled(hard_set, tmp_path / "set")
    assert _eval(path, "--protocol", "challenge", "--unofficial") == 0
    challenge = _report(path)["convnet_challenge"]
    # a single-protocol file as earlier versions wrote it (model -> report) stays readable
    (path / "eval.json").write_text(json.dumps({"convnet": challenge}))
    assert _eval(path) == 0  # classic
    report = _report(path)
    assert report["convnet_challenge"] == challenge and report["convnet"]["protocol"] == "classic"
    assert _eval(path, "--lr", "0.02") == 0  # the same protocol and model: replaced
    assert set(_report(path)) == {"convnet", "convnet_challenge"}
    assert _report(path)["convnet"]["settings"]["lr"] == pytest.approx(0.02)
    page = (path / "report.html").read_text(encoding="utf-8")
    table = page.split('id="accuracy"')[1].split("</table>")[0]
    assert ">challenge<" in table and ">classic<" in table


def test_eval_several_models(tmp_path, hard_set, capsys):
    path = save_distilled(hard_set, tmp_path / "set")
    assert _eval(path, "--models", "convnet", "mlp") == 0
    report = _report(path)
    assert set(report) == {"convnet", "mlp"}
    assert report["mlp"]["model"] == "mlp" and len(report["mlp"]["accuracies"]) == 1
    assert "[mlp]" in capsys.readouterr().out
    assert _eval(path, "--models", "nonet") == 2
    assert "nonet" in capsys.readouterr().err


def test_eval_hard_labels_argmaxes_soft_labels(tmp_path, hard_set):
    soft = torch.nn.functional.one_hot(hard_set.labels, 10).float() * 3  # (10, 10) logits
    path = save_distilled(DistilledSet(images=hard_set.images, labels=soft, lr=0.05,
                                       info=hard_set.info, space="normalized", ipc=1,
                                       method="datm"), tmp_path / "soft")
    assert _eval(path) == 0
    assert _report(path)["convnet"]["settings"]["labels"] == "soft"
    assert _eval(path, "--hard-labels") == 0
    assert _report(path)["convnet"]["settings"]["labels"] == "hard"


def test_eval_legacy_zca_flag_selects_the_space(tmp_path, hard_set, capsys):
    legacy = export_legacy(hard_set, tmp_path / "legacy")
    for flag, space in ((["--zca"], "zca"), ([], "normalized")):
        out = tmp_path / f"{space}.json"
        assert _eval(legacy, "--dataset", "digits", "--out", str(out), *flag) == 0
        assert json.loads(out.read_text())["convnet"]["settings"]["space"] == space
    capsys.readouterr()
    assert _eval(legacy) == 2  # a legacy triple needs --dataset
    assert "does not record its dataset" in capsys.readouterr().err


# ----------------------------------------------------------------------------- baselines


def test_baseline_random_uses_the_ipc(tmp_path):
    out = tmp_path / "r.json"
    code = main(["baseline", "random", "--dataset", "digits", "--ipc", "2", "--epochs", "1",
                 "--runs", "1", "--quiet", "--out", str(out)])
    assert code == 0
    rep = json.loads(out.read_text())
    assert rep["protocol"] == "random" and rep["settings"]["ipc"] == 2


def test_baseline_full(tmp_path, capsys):
    out = tmp_path / "f.json"
    code = main(["baseline", "full", "--dataset", "digits", "--epochs", "1", "--runs", "1",
                 "--quiet", "--out", str(out)])
    assert code == 0
    rep = json.loads(out.read_text())
    assert rep["protocol"] == "full" and rep["settings"]["epochs"] == 1
    assert rep["settings"]["n_images"] == len(create_dataset("digits", split="train").labels)
    assert "full training set, 1 epochs" in capsys.readouterr().out


def test_baseline_unknown_dataset_is_a_clean_error(tmp_path, capsys):
    code = main(["baseline", "full", "--dataset", "digitz", "--epochs", "1", "--runs", "1",
                 "--quiet", "--out", str(tmp_path / "f.json")])
    assert code == 2
    assert "digitz" in capsys.readouterr().err
