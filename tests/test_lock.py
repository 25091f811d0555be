"""One owner per output folder: a second process is refused, a dead owner's lock taken over."""

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from datadistill.runtime import lock
from datadistill.runtime.lock import LockError, lock_folder

HOLD = ("import sys, time\nfrom datadistill.runtime.lock import lock_path\n"
        "with lock_path(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(60)\n")


def hold(lock_file: Path) -> subprocess.Popen:
    """A second process holding the lock file until killed."""
    env = {**os.environ, "PYTHONPATH": str(Path(lock.__file__).parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(lock_file)],
                            stdout=subprocess.PIPE, env=env, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.fixture
def holder(tmp_path):
    """A second process holding tmp_path/out until killed."""
    proc = hold(tmp_path / "out" / ".lock")
    yield proc
    proc.kill()
    proc.wait()


def test_second_process_is_refused_naming_the_holder(tmp_path, holder):
    with pytest.raises(LockError, match=rf"in use by pid {holder.pid} on .*wait for it"):
        with lock_folder(tmp_path / "out"):
            pass


def test_lock_of_a_killed_owner_is_taken_over_with_a_warning(tmp_path, holder, caplog):
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (tmp_path / "out" / ".lock").is_file()  # kill -9 leaves the file behind
    with caplog.at_level(logging.WARNING), lock_folder(tmp_path / "out"):
        record = json.loads((tmp_path / "out" / ".lock").read_text())
        assert record["pid"] == os.getpid()
    assert "stale lock" in caplog.text and f"pid {holder.pid}" in caplog.text
    assert not (tmp_path / "out" / ".lock").exists()  # released: removed


def test_stale_record_of_dead_pid_is_taken_over(tmp_path, caplog):
    (tmp_path / ".lock").write_text(json.dumps(
        {"pid": 999999, "host": "here", "started": "yesterday", "command": "datadistill run"}))
    with caplog.at_level(logging.WARNING), lock_folder(tmp_path):
        pass
    assert "stale lock" in caplog.text and "pid 999999" in caplog.text


def test_hand_written_lock_naming_a_live_pid_is_not_taken_over(tmp_path):
    import socket

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / ".lock").write_text(json.dumps(
            {"pid": sleeper.pid, "host": socket.gethostname(), "started": "now",
             "command": "datadistill run"}))
        with pytest.raises(LockError, match=rf"locked by pid {sleeper.pid} .*still running"):
            with lock_folder(tmp_path):
                pass
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == sleeper.pid  # untouched
    finally:
        sleeper.kill()
        sleeper.wait()
    with lock_folder(tmp_path):  # its pid has ended: now the lock is stale
        pass


def test_lock_of_a_reused_pid_is_taken_over(tmp_path, caplog):
    # the recorded start time tells the dead owner from a later process with its pid
    import socket

    (tmp_path / ".lock").write_text(json.dumps(
        {"pid": os.getppid(), "host": socket.gethostname(), "started": "long ago",
         "command": "datadistill run", "pid_start": -1}))
    with caplog.at_level(logging.WARNING), lock_folder(tmp_path):
        assert json.loads((tmp_path / ".lock").read_text())["pid_start"] == lock._pid_start(
            os.getpid())
    assert "no longer running" in caplog.text


def test_same_process_may_nest(tmp_path):
    with lock_folder(tmp_path), lock_folder(tmp_path):
        assert (tmp_path / ".lock").is_file()
    assert not (tmp_path / ".lock").exists()


def test_pipeline_refuses_a_locked_folder_before_writing(tmp_path, holder):
    from datadistill.tm.config import load_pipeline_config
    from datadistill.tm.pipeline import run_pipeline

    cfg = load_pipeline_config("digits/mtt_ipc1", ["distill.iterations=1"])
    with pytest.raises(LockError, match="in use by"):
        run_pipeline(cfg, tmp_path / "out", progress=False)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".lock"]


def test_baseline_report_is_locked(tmp_path, capsys):
    from datadistill.cli import main

    proc = hold(tmp_path / ".b.json.lock")
    try:
        code = main(["baseline", "random", "--out", str(tmp_path / "b.json"), "--epochs", "1",
                     "--runs", "1", "--quiet"])
    finally:
        proc.kill()
        proc.wait()
    assert code == 2 and f"in use by pid {proc.pid}" in capsys.readouterr().err
    assert not (tmp_path / "b.json").exists()


def test_filesystem_without_locks_warns_and_proceeds(tmp_path, monkeypatch, caplog):
    def no_locks(fd, op):
        raise OSError(37, "No locks available")

    monkeypatch.setattr(lock.fcntl, "flock", no_locks)
    with caplog.at_level(logging.WARNING), lock_folder(tmp_path):
        assert (tmp_path / ".lock").is_file()
    assert "cannot be locked on this filesystem" in caplog.text


def test_a_finished_expert_store_is_shared_an_unfinished_one_is_owned(tmp_path, digits):
    from datadistill.experts import ExpertConfig, train_experts

    cfg = ExpertConfig(dataset="digits", num_experts=1, epochs=1, lr=0.1, batch_size=64,
                       model_kwargs={"width": 4})
    train_experts(cfg, digits, tmp_path / "store", progress=False)
    proc = hold(tmp_path / "store" / ".lock")  # e.g. a grid's other run using the store
    try:
        assert len(train_experts(cfg, digits, tmp_path / "store", progress=False)) == 1
        more = dataclasses.replace(cfg, num_experts=2)  # work to do: the folder must be owned
        with pytest.raises(LockError, match=f"in use by pid {proc.pid}"):
            train_experts(more, digits, tmp_path / "store", progress=False)
    finally:
        proc.kill()
        proc.wait()


def test_a_failed_call_removes_only_the_empty_folder_its_lock_created(tmp_path):
    """A run refused before writing anything leaves no empty output folder behind; a folder
    that existed, or that holds output, stays."""
    from datadistill.runtime.lock import locks_output

    @locks_output("out")
    def work(out, write=False):
        if write:
            (Path(out) / "partial.txt").write_text("kept")
        raise ValueError("refused")

    for name, existed, write, stays in (("new", False, False, False), ("old", True, False, True),
                                        ("wrote", False, True, True)):
        out = tmp_path / name
        if existed:
            out.mkdir()
        with pytest.raises(ValueError, match="refused"):
            work(out, write)
        assert out.exists() == stays, name
        assert not (out / lock.LOCK_NAME).exists()
