"""Orphaned temporary files, file permissions, SIGTERM, full disks and decompression bombs."""

import gzip
import io
import os
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest
import torch

from datadistill import io as dio
from datadistill.data import safe_archive
from datadistill.data.mnist import read_idx
from datadistill.errors import ArtifactError, DatasetError
from datadistill.runtime.lock import lock_folder


def test_orphaned_tmp_files_are_removed_when_a_folder_is_opened(tmp_path):
    (tmp_path / "best").mkdir(parents=True)
    (tmp_path / "shared").mkdir()
    dead = _dead_pid()
    orphans = [tmp_path / f".datadistill-{dead}-checkpoint.pt.k2j3h4.tmp",
               tmp_path / "best" / f".datadistill-{dead}-tensors.pt.x1.tmp"]
    kept = [tmp_path / "notes.tmp", tmp_path / "checkpoint.pt",
            tmp_path / ".my.backup.notes.tmp", tmp_path / ".checkpoint.pt.k2j3h4.tmp",  # a user's
            tmp_path / f".datadistill-{os.getpid()}-eval.json.a1.tmp",  # a live writer's
            tmp_path / "shared" / f".datadistill-{dead}-expert_0001.pt.a1.tmp"]  # another owner
    (tmp_path / "shared" / ".lock").write_text("")
    for p in orphans + kept:
        p.write_bytes(b"x")
    with lock_folder(tmp_path):
        assert [p.exists() for p in orphans] == [False, False]
        assert all(p.exists() for p in kept)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_atomic_writes_use_the_name_the_clean_up_removes(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(dio.os, "replace", lambda a, b: seen.append(Path(a).name))
    dio.write_json({"a": 1}, tmp_path / "m.json")
    assert seen and dio._TMP_NAME.match(seen[0]) and f"-{os.getpid()}-m.json." in seen[0]


def test_files_get_the_users_umask(tmp_path):
    old = os.umask(0o002)
    try:
        dio.write_json({"a": 1}, tmp_path / "m.json")
        dio.save_tensors({"x": torch.zeros(2)}, tmp_path / "t.pt")
    finally:
        os.umask(old)
    for name in ("m.json", "t.pt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o664


def test_sigterm_stops_like_ctrl_c(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(dio.__file__).parents[1])}
    out = tmp_path / "b.json"
    proc = subprocess.Popen([sys.executable, "-m", "datadistill", "baseline", "random",
                             "--epochs", "100000", "--runs", "1", "--quiet", "--out", str(out)],
                            stderr=subprocess.PIPE, env=env, text=True)
    lock = tmp_path / ".b.json.lock"
    deadline = time.time() + 120
    while not lock.exists() and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143
    # `baseline` keeps no finished runs and has no --restart: the hint promises neither
    assert err.strip() == "interrupted" and "Traceback" not in err
    assert not lock.exists()  # released on the way out


def test_full_disk_is_said_in_words(tmp_path, monkeypatch):
    def torch_full(obj, f):
        raise RuntimeError("[enforce fail at inline_container.cc:595] . unexpected pos 896 vs 790")

    monkeypatch.setattr("datadistill.io.torch.save", torch_full)
    monkeypatch.setattr("datadistill.io.shutil.disk_usage",
                        lambda p: type("U", (), {"free": 0})())
    with pytest.raises(ArtifactError, match="no space left on the device holding"):
        dio.save_tensors({"x": torch.zeros(2)}, tmp_path / "t.pt")
    assert list(tmp_path.iterdir()) == []  # nothing half-written left behind


def test_enospc_while_writing_json(tmp_path, monkeypatch):
    def full(self, text):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(ArtifactError, match="no space left"):
        dio.write_json({"a": 1}, tmp_path / "m.json")


def test_gzip_bomb_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(safe_archive, "MAX_EXPANDED_BYTES", 2**20)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(b"\0" * (4 * 2**20)))
    with pytest.raises(DatasetError, match="decompression bomb"):
        read_idx(path, 3, "images")


def test_tar_and_zip_bombs_are_refused_before_expanding(tmp_path, monkeypatch):
    monkeypatch.setattr(safe_archive, "MAX_EXPANDED_BYTES", 2**20)
    payload = b"\0" * (2 * 2**20)
    tar_path = tmp_path / "a.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        info = tarfile.TarInfo("d/big")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    zip_path = tmp_path / "a.zip"
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("d/big", payload)
    with pytest.raises(DatasetError, match="decompression bomb"):
        safe_archive.read_tar_members(tar_path, {"d/big"})
    with pytest.raises(DatasetError, match="decompression bomb"):
        safe_archive.extract_tar(tar_path, tmp_path / "x")
    with pytest.raises(DatasetError, match="decompression bomb"):
        safe_archive.extract_zip(zip_path, tmp_path / "y")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y" / "d").exists()


@pytest.mark.parametrize("argv", [
    ["baseline", "random", "--epochs", "1", "--runs", "1", "--quiet", "--out", "{tmp}/b.json"],
    ["eval", "{set}", "--epochs", "1", "--runs", "1", "--quiet"],
    ["run", "digits/mtt_ipc1", "--out", "{tmp}/r", "--quiet"],
], ids=["baseline", "eval", "run"])
def test_enospc_while_writing_the_lock_is_one_error_and_leaves_no_lock(tmp_path, monkeypatch,
                                                                       capsys, argv):
    from datadistill.cli import main

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bad_inputs

    folder = bad_inputs._digits_set(tmp_path)
    argv = [a.format(tmp=tmp_path, set=folder) for a in argv]

    def full(fd, data, offset):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("datadistill.runtime.lock.os.pwrite", full)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "error: no space left on the device holding" in err and "Traceback" not in err
    assert not [p for p in tmp_path.rglob("*lock")]  # no 0-byte lock left behind


def test_report_on_a_read_only_folder_is_one_error_line(tmp_path, monkeypatch, capsys):
    from datadistill.cli import main

    (tmp_path / "r").mkdir()
    real = os.access
    monkeypatch.setattr("datadistill.checks.os.access",  # a read-only mount, as for root
                        lambda p, mode: False if Path(p) == tmp_path / "r" else real(p, mode))
    assert main(["report", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "error: the output folder" in err and "not writable" in err
    assert "Traceback" not in err
