"""One meaning for `--out` (the run folder, the store at <out>/experts unless --experts or
distill.expert_dir names another), and run folders that survive a move: `repair` works from
any working directory and after the folder was moved, and names --experts when the store is
gone."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from datadistill.artifacts.distilled import load_distilled
from datadistill.cli import build_parser, main, parse_args
from datadistill.errors import ArtifactError
from datadistill.tm.checkpoint import load_checkpoint
from datadistill.tm.config import load_pipeline_config
from datadistill.tm.pipeline import find_recorded_store, recorded_store, train_pipeline_experts

SMALL = ["experts.num_experts=1", "experts.epochs=3", "distill.iterations=2",
         "distill.syn_steps=2", "distill.max_start_epoch=1", "distill.expert_epochs=2",
         "distill.eval_every=0", "distill.eval_runs=0", "evaluation.runs=1",
         "evaluation.epochs=1", "evaluation.random_baseline=false", "model_kwargs={width: 8}",
         "train_per_class=20"]
# best/ at iteration 2 of 4: rebuilding it replays the distillation, which reads the store
REPLAY = [*SMALL, "distill.iterations=4", "distill.eval_every=2", "distill.eval_runs=1",
          "distill.eval_epochs=1", "distill.lr_img=1000"]


def _store(folder) -> bool:
    return (folder / "meta.json").is_file()


def test_experts_and_distill_share_the_run_folder(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["experts", "digits/mtt_ipc1", *SMALL, "--out", str(run), "--quiet"]) == 0
    assert _store(run / "experts") and not _store(run)
    assert main(["distill", "digits/mtt_ipc1", *SMALL, "--out", str(run), "--quiet"]) == 0
    assert json.loads((run / "distill" / "config.json").read_text())["expert_dir"] == "experts"


def test_distill_refuses_a_store_trained_on_another_subset(tmp_path, capsys):
    store = tmp_path / "store"
    train_pipeline_experts(load_pipeline_config("digits/mtt_ipc1", SMALL), store,
                           progress=False)  # train_per_class=20
    for other in ("null", "10"):
        capsys.readouterr()
        assert main(["distill", "digits/mtt_ipc1", *SMALL, f"train_per_class={other}", "--out",
                     str(tmp_path / other), "--experts", str(store), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert f"trained with train_per_class=20 but this run has train_per_class={other}" in err
        assert not (tmp_path / other / "distill" / "checkpoint.pt").exists()


def test_helps_say_what_out_and_experts_are():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in ("run", "experts", "distill"):
        text = sub.choices[name].format_help()
        assert "run folder" in text and "<out>/experts" in text and "--experts" in text


def test_repair_after_a_move_from_another_directory_and_with_a_moved_store(
        tmp_path, monkeypatch, capsys):
    start, elsewhere = tmp_path / "start", tmp_path / "elsewhere"
    start.mkdir(), elsewhere.mkdir()
    monkeypatch.chdir(start)
    assert main(["run", "digits/mtt_ipc1", *REPLAY, "--out", "a", "--quiet"]) == 0
    assert load_checkpoint(start / "a" / "distill" / "checkpoint.pt").config["expert_dir"] \
        == "experts"  # relative to the run folder, not to the working directory
    best = load_distilled(start / "a" / "distill" / "best")
    moved = tmp_path / "moved" / "b"
    moved.parent.mkdir()
    shutil.move(start / "a", moved)
    monkeypatch.chdir(elsewhere)

    def damage_and_repair(*extra: str) -> tuple[int, str, str]:
        (moved / "distill" / "best" / "tensors.pt").write_bytes(b"torn")
        capsys.readouterr()
        code = main(["repair", str(moved), "--quiet", *extra])
        return code, *capsys.readouterr()

    code, out, err = damage_and_repair()
    assert code == 0, err
    assert "rebuilt best/ by replaying iterations 0-2" in out
    assert torch.equal(load_distilled(moved / "distill" / "best").images, best.images)
    # the store moved away: a clear error naming --experts, then --experts finds it
    shutil.move(moved / "experts", tmp_path / "store")
    code, out, err = damage_and_repair()
    assert code == 2 and "--experts" in err and "Traceback" not in err
    assert not (moved / "experts").exists()  # no new experts trained in its place
    code, out, err = damage_and_repair("--experts", str(tmp_path / "store"))
    assert code == 0, err
    assert torch.equal(load_distilled(moved / "distill" / "best").images, best.images)
    assert not (moved / "experts").exists()


def test_a_store_recorded_relative_to_the_old_working_directory(tmp_path, monkeypatch):
    """Checkpoints written before: the store relative to where the run started."""
    start = tmp_path / "start"
    (start / "runs" / "x" / "experts").mkdir(parents=True)
    (start / "runs" / "x" / "experts" / "meta.json").write_text("{}")
    monkeypatch.chdir(start)
    assert find_recorded_store("runs/x/experts", "runs/x").resolve() == \
        (start / "runs" / "x" / "experts").resolve()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ArtifactError, match="pass its location with --experts STORE"):
        find_recorded_store("runs/x/experts", start / "runs" / "x")
    assert recorded_store(start / "runs" / "x" / "experts", start / "runs" / "x") == "experts"
    assert recorded_store(tmp_path / "s", start) == str((tmp_path / "s").resolve())


def test_run_honours_distill_expert_dir_and_experts(tmp_path, capsys):
    store, run = tmp_path / "store", tmp_path / "run"
    assert main(["run", "digits/mtt_ipc1", *SMALL, f"distill.expert_dir={store}", "--out",
                 str(run), "--quiet"]) == 0
    assert _store(store) and not (run / "experts").exists()
    recorded = load_checkpoint(run / "distill" / "checkpoint.pt").config["expert_dir"]
    assert recorded == str(store.resolve())
    capsys.readouterr()
    assert main(["run", "digits/mtt_ipc1", *SMALL, f"distill.expert_dir={store}", "--experts",
                 str(tmp_path / "other"), "--out", str(run), "--quiet"]) == 2
    assert "name two different expert stores" in capsys.readouterr().err
    second = tmp_path / "second"
    assert main(["run", "digits/mtt_ipc1", *SMALL, "--experts", str(tmp_path / "s2"), "--out",
                 str(second), "--quiet"]) == 0
    assert _store(tmp_path / "s2") and not (second / "experts").exists()


def test_the_download_hint_is_a_flag_of_every_command_that_reads_data(tmp_path, capsys):
    for argv in (["run", "cifar10/mtt_ipc1"], ["experts", "cifar10/mtt_ipc1"],
                 ["distill", "cifar10/mtt_ipc1"], ["estimate", "cifar10/mtt_ipc1"],
                 ["teachers", "digits/infer_ipc10"], ["infer", "digits/infer_ipc10"]):
        assert parse_args(build_parser(), [*argv, "--download"]).overrides == ["download=true"]
    code = main(["run", "cifar10/mtt_ipc1", f"data_root={tmp_path}", "--out",
                 str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "(CLI: --download, or the override download=true)" in err
