"""The CIFAR-10 protocol's per-preset windows and its resumable results file
(benchmarks/cifar10.py)."""

import sys
from argparse import Namespace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from cifar10 import DEFAULTS, finished, scaled, window_overrides  # noqa: E402


def args(**kw):
    base = dict(iterations=DEFAULTS["iterations"], window_scale=0.25)
    base.update(kw)
    return Namespace(**base)


def test_the_default_run_is_several_hundred_iterations():
    assert DEFAULTS["iterations"] >= 300


def test_scaled_epochs_round_up_and_stay_positive():
    assert [scaled(e, 0.25) for e in (20, 10, 15, 1)] == [5, 3, 4, 1]
    assert scaled(None, 0.25) is None


def test_ipc1_keeps_the_official_windows():
    assert window_overrides(args(), "mtt", 1) == ["distill.max_start_epoch=2"]
    datm = window_overrides(args(), "datm", 1)
    assert "distill.max_start_epoch=4" in datm


@pytest.mark.parametrize("iterations, end", [(150, 15), (450, 45)])
def test_ipc10_expanding_window_is_scaled_and_reaches_its_end_at_the_official_fraction(
        iterations, end):
    out = window_overrides(args(iterations=iterations), "datm", 10)
    assert "distill.max_start_epoch=5" in out               # T+ 20 x 1/4
    assert "distill.current_max_start_epoch=3" in out       # T 10 x 1/4, rounded up
    assert f"distill.expansion_end={end}" in out            # 1,000 of 10,000 -> 10 %
    assert window_overrides(args(iterations=iterations), "mtt", 10) == [
        "distill.max_start_epoch=5"]


def test_pad_schedule_is_scaled_with_the_windows():
    out = window_overrides(args(), "pad", 10)
    assert {"curriculum.schedule.add_end_epoch=5", "curriculum.schedule.rm_epoch_first=10",
            "curriculum.schedule.rm_epoch_second=15"} <= set(out)


def test_a_stored_row_of_the_same_length_is_skipped(tmp_path):
    results = {"mtt_ipc1": {"protocol": {"iterations": 450}}}
    assert finished(results, "mtt_ipc1", args(iterations=450), tmp_path / "r.json")
    assert not finished(results, "ftd_ipc1", args(iterations=450), tmp_path / "r.json")


def test_a_stored_row_of_another_length_is_refused_with_the_fix(tmp_path):
    results = {"mtt_ipc10": {"protocol": {"iterations": 150}}}
    with pytest.raises(SystemExit, match="150-iteration run.*--iterations 150.*--out a new"):
        finished(results, "mtt_ipc10", args(iterations=450), tmp_path / "r.json")
