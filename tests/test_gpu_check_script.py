"""benchmarks/gpu_check.sh, dry-run on the CPU (--device cpu --tiny): every step runs and the
one JSON file it writes says so. Slow (a few minutes on 2 cores); the figures mean nothing."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_dry_run_on_the_cpu_writes_every_step(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.run([str(ROOT / "benchmarks" / "gpu_check.sh"), "--device", "cpu",
                           "--tiny", "--out", str(out)], capture_output=True, text=True,
                          env=env, timeout=1800)
    report = json.loads(out.read_text())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert report["ok"] is True
    steps = report["steps"]
    names = [s["name"] for s in steps] if isinstance(steps, list) else list(steps)
    for name in ("env", "parity", "speed", "memory"):
        assert name in names, names


def test_gpu_check_refuses_an_unknown_argument():
    proc = subprocess.run([str(ROOT / "benchmarks" / "gpu_check.sh"), "--bogus"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "unknown argument --bogus" in proc.stderr
