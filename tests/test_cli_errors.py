"""Every sub-command answers missing or wrong positional arguments with one `error:` line and
exit status 2, never a traceback. The sub-commands are read from the parser, so a new one is
covered without editing this file."""

from __future__ import annotations

import argparse
import re

import pytest
import torch

from datadistill.cli import build_parser, main


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _positionals(p: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in p._actions if not a.option_strings]


def _required_options(p: argparse.ArgumentParser) -> list[str]:
    """Required options, each given a harmless value, so the handler itself is reached."""
    words = []
    for a in p._actions:
        if a.option_strings and a.required:
            words += [a.option_strings[0], "digits" if a.dest == "dataset" else "given"]
    return words


def _wrong_argv(name: str, p: argparse.ArgumentParser, missing: str) -> list[str]:
    """Every positional filled with a wrong value: an invalid choice, or a path that does not
    exist (a config name, a set, a folder, a file); a command without positionals gets one."""
    words = []
    for a in _positionals(p):
        if a.nargs == "*":
            continue
        words.append("bogus" if a.choices else missing)
    return [name, *(words or ["bogus"]), *_required_options(p)]


def _missing_argv(name: str, p: argparse.ArgumentParser) -> list[str] | None:
    """The command without its positionals, when one is required (else it would run)."""
    required = [a for a in _positionals(p) if a.nargs not in ("?", "*")]
    return [name, *_required_options(p)] if required else None


def _cases(missing: str) -> list[list[str]]:
    cases = [[]]  # no sub-command at all
    for name, p in _subcommands().items():
        cases.append(_wrong_argv(name, p, missing))
        if (argv := _missing_argv(name, p)) is not None:
            cases.append(argv)
    return cases


def _assert_user_error(argv: list[str], capsys) -> str:
    try:
        rc = main(argv)
    except SystemExit as exit_:  # argparse's own errors
        rc = exit_.code
    out, err = capsys.readouterr()
    assert rc == 2, f"{argv}: exit {rc}\n{out}{err}"
    assert "Traceback" not in err + out, argv
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, f"{argv}: {err}"
    return errors[0]


def test_every_subcommand_has_a_wrong_and_a_missing_case():
    cases = _cases("x")
    for name in _subcommands():
        assert any(c[:1] == [name] for c in cases), name
    assert ["configs"] in cases and ["challenge"] in cases  # required positionals left out


def test_every_subcommand_refuses_wrong_or_missing_positionals(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "no_such_dir" / "none"
    for argv in _cases(str(missing)):
        _assert_user_error(argv, capsys)
        assert not missing.parent.exists(), f"{argv} created {missing.parent}"


@pytest.mark.parametrize("argv, match", [
    (["configs", "show"], "needs a config name"),
    (["configs", "cp"], "needs a config name"),
    (["configs", "show", "no/such"], "no config file or shipped config named 'no/such'"),
    (["configs", "cp", "digits/mtt_ipc1", "{tmp}/no_such_dir/x.yaml"],
     "the folder .*no_such_dir does not exist"),
    (["challenge", "{tmp}"], "holds no cifar100.pt and no tinyimagenet.pt"),
    (["eval", "{tmp}/no_such_set"], "no_such_set does not exist"),
])
def test_named_user_errors(argv, match, tmp_path, capsys):
    line = _assert_user_error([a.replace("{tmp}", str(tmp_path)) for a in argv], capsys)
    assert re.search(match, line), line
    assert not (tmp_path / "no_such_set").exists()


def test_challenge_files_that_are_not_tensors_are_refused_before_any_evaluation(tmp_path,
                                                                              capsys):
    (tmp_path / "cifar100.pt").write_text("not a tensor file")
    torch.save({"images": torch.zeros(1)}, tmp_path / "tinyimagenet.pt")
    line = _assert_user_error(["challenge", str(tmp_path)], capsys)
    assert "cifar100.pt cannot be read (truncated, damaged or not a tensor file)" in line
    torch.save(torch.zeros(1, 3, 32, 32), tmp_path / "cifar100.pt")
    line = _assert_user_error(["challenge", str(tmp_path)], capsys)
    assert "tinyimagenet.pt holds a dict" in line and "not a tensor" in line
