"""Several processes under torchrun (gloo on CPU), on the embedded digits at toy scale.

Each test launches ``python -m torch.distributed.run --nproc_per_node 2 -m datadistill ...``
exactly as a user would, and compares with the same command run as one process.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from datadistill.experts.store import expert_path

SRC = str(Path(__file__).resolve().parents[1] / "src")
TINY_EXPERTS = ["train_per_class=10", "model_kwargs.width=4", "experts.num_experts=5",
                "experts.epochs=2", "experts.batch_size=32", "distill.max_start_epoch=1"]
TINY_TEACHERS = ["train_per_class=10", "teachers.archs=[convnet_bn,convnet_bn_w]",
                 "teachers.epochs=1", "teachers.width_mult=0.25"]


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=SRC)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def datadistill(*args: str, procs: int = 1, cwd: Path | None = None
                ) -> subprocess.CompletedProcess:
    """Run the CLI as one plain process, or under torchrun with ``procs`` processes."""
    if procs == 1:
        cmd = [sys.executable, "-m", "datadistill", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={procs}", "--no-python", sys.executable, "-m", "datadistill",
               *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=cwd,
                          timeout=300)


def _ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def _experts(out: Path, procs: int, *extra: str) -> subprocess.CompletedProcess:
    return datadistill("experts", "digits/mtt_ipc1", *TINY_EXPERTS, *extra, "--out", str(out),
                       "--quiet", procs=procs)


def _assert_same_store(a: Path, b: Path, count: int) -> None:
    for i in range(count):
        x = torch.load(expert_path(a, i), weights_only=True)
        y = torch.load(expert_path(b, i), weights_only=True)
        assert x.keys() == y.keys()
        for key in x:
            assert torch.equal(x[key], y[key]), f"expert {i} {key} differs"
    assert not expert_path(a, count).exists() and not expert_path(b, count).exists()


@pytest.fixture(scope="module")
def single_store(tmp_path_factory) -> Path:
    """The reference: the toy store trained by one process."""
    out = tmp_path_factory.mktemp("single") / "experts"
    _ok(_experts(out, 1))
    return out


def test_two_processes_train_the_same_store_bitwise(single_store, tmp_path):
    out = tmp_path / "experts"
    proc = _ok(_experts(out, 2))
    _assert_same_store(out, single_store, 5)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["world_size"] == 2
    assert json.loads((single_store / "meta.json").read_text())["world_size"] == 1
    assert proc.stdout.count("5 experts in") == 1  # rank 1 printed nothing
    assert not (out / ".lock").exists()


def test_a_store_started_by_one_process_resumes_with_two(single_store, tmp_path):
    out = tmp_path / "experts"
    _ok(_experts(out, 1, "experts.num_experts=2"))  # the first try stopped after 2 experts
    _ok(_experts(out, 2))
    _assert_same_store(out, single_store, 5)


def test_a_failing_rank_stops_the_job_and_a_rerun_resumes(single_store, tmp_path):
    out = tmp_path / "experts"
    # Expert 1 falls to rank 1 of 2; a folder in its place makes rank 1's write fail.
    expert_path(out, 1).mkdir(parents=True)
    proc = _experts(out, 2)
    assert proc.returncode != 0
    # torchrun's failure summary names rank 1 as the root cause, with its error
    cause = proc.stderr.split("Root Cause", 1)[-1]
    assert re.search(r"rank\s*:\s*1\b", cause), proc.stderr
    assert "IsADirectoryError" in cause and "expert_0001.pt" in cause
    assert "experts in" not in proc.stdout  # rank 0 did not report a finished store
    expert_path(out, 1).rmdir()
    _ok(_experts(out, 2))
    _assert_same_store(out, single_store, 5)
