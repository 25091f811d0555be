"""The suite's time limit (tests/timelimit.py): a hanging test fails fast and is named."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from timelimit import DEFAULT_LIMIT, SLOW_LIMIT, limit_for

TESTS = Path(__file__).parent
SRC = TESTS.parent / "src"


def _pytest(folder: Path, env_limit: str) -> tuple[subprocess.CompletedProcess, float]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), str(SRC)]),
               DATADISTILL_TEST_TIMELIMIT=env_limit)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "timelimit",
                           "-p", "no:cacheprovider", "--rootdir", str(folder), "-o", "addopts=",
                           str(folder)], env=env, capture_output=True, text=True, timeout=120,
                          cwd=folder)
    return proc, time.perf_counter() - t0


def test_a_hanging_test_fails_with_its_name_and_the_others_still_run(tmp_path):
    (tmp_path / "test_hang.py").write_text(
        "import time\n\n"
        "def test_sleeps_forever():\n    time.sleep(600)\n\n"
        "def test_quick():\n    assert True\n")
    proc, seconds = _pytest(tmp_path, "1")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "FAILED test_hang.py::test_sleeps_forever" in out
    assert "ran past its time limit of 1 s" in out
    assert "1 failed, 1 passed" in out
    assert seconds < 60  # not the 600 s the test would sleep


def test_limits_by_marker(monkeypatch):
    class Item:
        def __init__(self, **marks):
            self.marks = marks

        def get_closest_marker(self, name):
            return self.marks.get(name)

    monkeypatch.delenv("DATADISTILL_TEST_TIMELIMIT", raising=False)
    assert limit_for(Item()) == DEFAULT_LIMIT
    monkeypatch.setenv("DATADISTILL_TEST_TIMELIMIT", "7")
    assert limit_for(Item()) == 7
    assert limit_for(Item(slow=pytest.mark.slow.mark)) == SLOW_LIMIT > DEFAULT_LIMIT
    assert limit_for(Item(timelimit=pytest.mark.timelimit(5).mark)) == 5
