"""The command-line shell: each subcommand reaches its library call and reports errors cleanly."""

import json

import pytest
import torch

from datadistill.artifacts.distilled import DistilledSet, save_distilled
from datadistill.artifacts.legacy import export_legacy
from datadistill.cli import DEFAULT_THREADS, build_parser, main, parse_args
from datadistill.data import create_dataset, random_subset


@pytest.fixture(scope="module")
def digits_set():
    train = create_dataset("digits", split="train")
    x, y = random_subset(train, 1, generator=torch.Generator().manual_seed(0))
    return DistilledSet(images=x, labels=y, lr=0.01, info=train.info, space="normalized",
                        ipc=1, method="random")


def test_eval_saved_set_writes_report(tmp_path, digits_set, capsys):
    path = save_distilled(digits_set, tmp_path / "set")
    code = main(["eval", str(path), "--epochs", "2", "--runs", "2", "--quiet"])
    assert code == 0
    report = json.loads((path / "eval.json").read_text())
    assert len(report["convnet"]["accuracies"]) == 2
    assert 0.0 <= report["convnet"]["mean"] <= 1.0
    assert "2 runs" in capsys.readouterr().out


def test_eval_legacy_triple(tmp_path, digits_set):
    legacy = export_legacy(digits_set, tmp_path / "legacy")
    out = tmp_path / "r.json"
    code = main(["eval", str(legacy), "--dataset", "digits", "--epochs", "1", "--runs", "1",
                 "--quiet", "--out", str(out)])
    assert code == 0
    assert json.loads(out.read_text())["convnet"]["settings"]["lr"] == pytest.approx(0.01)


def test_eval_missing_path_is_a_clean_error(tmp_path, capsys):
    code = main(["eval", str(tmp_path / "nope"), "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "nope" in err


def test_baseline_random_report(tmp_path):
    out = tmp_path / "b.json"
    code = main(["baseline", "random", "--dataset", "digits", "--ipc", "1", "--epochs", "1",
                 "--runs", "1", "--quiet", "--out", str(out)])
    assert code == 0
    rep = json.loads(out.read_text())
    assert rep["protocol"] == "random" and rep["settings"]["epochs"] == 1


def test_baseline_ipc_larger_than_class_is_clean_error(capsys, tmp_path):
    # (not --out /dev/null: a device is refused as a report file, never replaced by one)
    code = main(["baseline", "random", "--dataset", "digits", "--ipc", "1000", "--epochs", "1",
                 "--runs", "1", "--quiet", "--out", str(tmp_path / "b.json")])
    assert code == 2
    assert "ipc" in capsys.readouterr().err.lower()


def test_configs_ls_show_cp(tmp_path, capsys):
    assert main(["configs", "ls"]) == 0
    names = capsys.readouterr().out.split()
    assert "cifar10/mtt_ipc1" in names
    assert main(["configs", "show", "cifar10/mtt_ipc1"]) == 0
    assert "syn_steps: 50" in capsys.readouterr().out
    assert main(["configs", "cp", "cifar10/mtt_ipc1", str(tmp_path)]) == 0
    assert (tmp_path / "mtt_ipc1.yaml").is_file()
    assert main(["configs", "show", "cifar10/mtt_ipc2"]) == 2
    assert "Did you mean" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["run", "experts", "distill", "teachers", "infer"])
def test_options_anywhere_among_overrides(command):
    argv = [command, "cfg", "a=1", "--out", "d", "b=2", "--quiet", "c=3"]
    args = parse_args(build_parser(), argv)
    assert (args.config, args.out, args.quiet) == ("cfg", "d", True)
    assert args.overrides == ["a=1", "b=2", "c=3"]  # in order: later ones win


def test_validate_after_an_option_and_unknown_words_are_errors(capsys):
    assert main(["--verbose", "validate", "digits/mtt_ipc1", "ipc=2"]) == 0
    assert "IPC 2" in capsys.readouterr().out
    for argv in (["run", "cfg", "--out", "d", "--bogus"], ["eval", "path", "ipc=2"],
                 ["run", "cfg", "--out", "d", "stray"]):
        with pytest.raises(SystemExit):
            parse_args(build_parser(), argv)
        assert "unrecognized arguments" in capsys.readouterr().err


def test_threads_are_set_once_at_start_up(monkeypatch, capsys):
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    try:
        assert main(["--threads", "2", "presets"]) == 0 and torch.get_num_threads() == 2
        assert main(["validate", "digits/mtt_ipc1", "--threads", "3"]) == 0
        assert torch.get_num_threads() == 3
        assert main(["presets"]) == 0 and torch.get_num_threads() == DEFAULT_THREADS
        monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's own choice is kept
        torch.set_num_threads(2)
        assert main(["presets"]) == 0 and torch.get_num_threads() == 2
        capsys.readouterr()
        assert main(["--threads", "-1", "presets"]) == 2
        assert "--threads" in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)
