"""benchmarks/distributed.py: its table, its overrides and its refusals (no launch here)."""

import argparse
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import distributed as bench  # noqa: E402


def test_table_gives_the_speed_up_over_one_process():
    experts = [{"procs": 1, "experts_per_second": 0.1}, {"procs": 2, "experts_per_second": 0.18}]
    distill = [{"procs": 1, "iterations_per_second": 0.5},
               {"procs": 2, "iterations_per_second": 0.8}]
    lines = bench.table(experts, distill).splitlines()
    assert lines[2] == "| 1 | 0.1000 | 1.00x | 0.5000 | 1.00x |"
    assert lines[3] == "| 2 | 0.1800 | 1.80x | 0.8000 | 1.60x |"
    assert bench.table(experts, []).splitlines()[3] == "| 2 | 0.1800 | 1.80x | - | - |"


def test_both_stages_get_the_same_overrides():
    args = argparse.Namespace(
        experts=4, expert_epochs=3, train_per_class=50, syn_steps=4, iterations=3,
        root="/data", extra=["seed=1"])
    got = bench.overrides(args)
    assert "experts.num_experts=4" in got and "distill.grad_mode=adjoint" in got
    assert "data_root=/data" in got and got[-1] == "seed=1" and "zca=false" in got


def test_uneven_shares_and_short_experts_are_refused(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--procs", "1", "2", "--experts", "3"])
    assert "--experts 3 is not divisible by [2] processes" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.main(["--expert-epochs", "2"])
    assert "--expert-epochs must be at least 3" in capsys.readouterr().err
