"""Drill: `datadistill run` killed with SIGKILL at random moments, and two runs in one folder.

Slow (minutes): ``python -m pytest -m slow tests/test_drill.py``. A run on digits is killed
at 20 random moments (experts, distillation, final evaluation), resumed each time, and must
end bitwise equal to an uninterrupted run: expert trajectories, checkpoint, best/ and last/,
metrics log and report (wall-clock fields aside). Then two runs start together in one
folder: one is refused naming the other, the other ends equal to the uninterrupted run.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import datadistill

pytestmark = pytest.mark.slow

ITERATIONS = 30
OVERRIDES = ["train_per_class=40", "experts.num_experts=3", "experts.epochs=4",
             f"distill.iterations={ITERATIONS}", "distill.syn_steps=10",
             "distill.max_start_epoch=2", "distill.expert_epochs=2", "distill.eval_every=10",
             "distill.eval_runs=2", "distill.eval_epochs=50", "distill.checkpoint_every=4",
             "evaluation.runs=4", "evaluation.epochs=150", "model_kwargs={width: 16}"]
KILLS = 20


def _start(out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(datadistill.__file__).parents[1]),
           "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "datadistill", "run", "digits/mtt_ipc1",
                             *OVERRIDES, "--out", str(out), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)


def _stage(out: Path) -> str:
    """Where a killed run stood."""
    from datadistill.tm.checkpoint import load_checkpoint

    if len(list((out / "experts").glob("expert_*.pt"))) < 3:
        return "experts"
    ckpt = out / "distill" / "checkpoint.pt"
    if not ckpt.is_file() or load_checkpoint(ckpt).evaluated != ITERATIONS:
        return "distill"
    return "evaluation"


def _wait_for_work(proc: subprocess.Popen, out: Path) -> None:
    """Until ``proc`` holds the run folder's lock (its work starts) or exits."""
    while proc.poll() is None:
        try:
            if json.loads((out / ".lock").read_text())["pid"] == proc.pid:
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.02)


def _strip(obj, root: Path):
    """A report without its wall-clock fields, with paths relative to the run folder."""
    if isinstance(obj, dict):
        return {k: _strip(v, root) for k, v in obj.items()
                if not str(k).startswith("seconds") and k != "time"}
    if isinstance(obj, list):
        return [_strip(v, root) for v in obj]
    if isinstance(obj, str):
        return obj.replace(str(root), "<out>")
    return obj


def _snapshot(out: Path) -> dict:
    """Everything a finished run holds, as comparable values."""
    snap = {}
    for path in sorted(out.rglob("*.pt")):
        snap[str(path.relative_to(out))] = _strip(torch.load(path, weights_only=True), out)
    rows = [json.loads(line) for line in (out / "distill" / "metrics.jsonl").read_text().split(
        "\n") if line]
    snap["metrics"] = _strip(rows, out)
    snap["eval"] = _strip(json.loads((out / "eval.json").read_text()), out)
    return snap


def _assert_same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        _equal(a[key], b[key], key)


def _equal(x, y, where: str) -> None:
    if isinstance(x, torch.Tensor):
        assert torch.equal(x, y), where
    elif isinstance(x, dict):
        assert sorted(x) == sorted(y), where
        for k in x:
            _equal(x[k], y[k], f"{where}.{k}")
    elif isinstance(x, list):
        assert len(x) == len(y), where
        for i, (u, v) in enumerate(zip(x, y, strict=True)):
            _equal(u, v, f"{where}[{i}]")
    else:
        assert x == y, where


def _drill_round(out: Path, rng: random.Random, span: float, budget: int) -> list[str]:
    """Kill a run at random moments of its work (at most ``budget`` times), resuming after
    each, until it finishes; the stages the kills hit."""
    stages: list[str] = []
    while True:
        proc = _start(out)
        _wait_for_work(proc, out)
        if len(stages) < budget:
            time.sleep(rng.uniform(0.0, span))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                stages.append(_stage(out))
                continue
        assert proc.wait() == 0, proc.stderr.read()
        return stages


def test_sigkill_drill_and_two_runs_in_one_folder(tmp_path):
    solo = _start(tmp_path / "solo")
    assert solo.wait() == 0, solo.stderr.read()
    reference = _snapshot(tmp_path / "solo")
    span = json.loads((tmp_path / "solo" / "eval.json").read_text())["seconds"]["total"]
    rng, stages, rounds = random.Random(0), [], 0
    while len(stages) < KILLS:  # a round ends when a draw outlasts the remaining work
        rounds += 1
        out = tmp_path / f"drill{rounds}"
        stages += _drill_round(out, rng, span, KILLS - len(stages))
        _assert_same(reference, _snapshot(out))
    print(f"drill: {len(stages)} SIGKILLs in {rounds} rounds, stages hit: "
          f"{ {s: stages.count(s) for s in ('experts', 'distill', 'evaluation')} }")
    assert len(stages) == KILLS

    a, b = _start(tmp_path / "pair"), _start(tmp_path / "pair")
    codes = sorted([a.wait(), b.wait()])
    errors = a.stderr.read() + b.stderr.read()
    assert codes == [0, 2] and "is in use by pid" in errors
    _assert_same(reference, _snapshot(tmp_path / "pair"))
