"""One owner per output folder: an advisory lock file naming its holder.

Every command that writes into a folder (run, experts, distill, teachers, infer, and the
reports of eval and baseline) holds ``<folder>/.lock`` while it works. The file records the
owner's pid, host, start time and command line; a second process that wants the same folder
is refused with a :class:`LockError` naming the holder, instead of silently doing the work
twice and mixing two runs' results.

Ownership is an exclusive ``flock`` on the file, which the kernel drops when the owner dies
(even by ``kill -9``), so a lock left behind by a dead process is never mistaken for a live
one: the next run takes it over and logs a warning naming the dead owner. One process may
take the same lock again (nested calls such as ``run`` -> ``experts``); it is released when
the outermost holder lets go.

Under torchrun the ranks of one job share their output folders: rank 0 alone takes (and
releases) the locks, the other ranks' calls are no-ops, so a second job is still refused while
the ranks of the first never refuse each other.

Example:
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> with lock_folder(folder):
    ...     pass                       # a second process here gets LockError
"""

from __future__ import annotations

import contextlib
import errno
import functools
import inspect
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datadistill import distributed
from datadistill.errors import ArtifactError, ConfigError, DatadistillError
from datadistill.io import is_disk_full, pid_alive, remove_orphans

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no locking
    fcntl = None

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"


class LockError(DatadistillError):
    """Another live process owns the output folder."""


@dataclass
class _Held:
    fd: int
    count: int


_HELD: dict[str, _Held] = {}  # lock path -> open descriptor held by this process


def _owner_record() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": " ".join(sys.argv),
            "pid_start": _pid_start(os.getpid())}


def _pid_start(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks after boot, /proc/<pid>/stat field 22), or
    None where that cannot be read: with the pid it names one process, never a later one that
    reuses the number."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _live_owner(text: str) -> bool:
    """True when the lock text names a process of this host that is still running (the same
    process: its start time matches where recorded). No flock is held on the file, so that
    process is not a datadistill run holding it, but its folder is not ours to take."""
    try:
        rec = json.loads(text)
        pid, host = int(rec["pid"]), rec["host"]
    except (ValueError, KeyError, TypeError):
        return False
    if host != socket.gethostname() or pid <= 0 or pid == os.getpid():
        return False
    if not pid_alive(pid):
        return False
    recorded = rec.get("pid_start")
    return recorded is None or recorded == _pid_start(pid)


def _describe(text: str) -> str:
    try:
        rec = json.loads(text)
        return (f"pid {rec['pid']} on {rec['host']}, started {rec['started']} "
                f"({rec.get('command', '?')})")
    except (ValueError, KeyError, TypeError):
        return "an unknown process (unreadable lock file)"


def _open_locked(path: Path) -> int | None:
    """An fd holding the flock on ``path`` (created if absent), or None if another owns it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except OSError as err:  # a filesystem without locks (some network mounts)
            if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP):
                raise
            log.warning("%s cannot be locked on this filesystem (%s); a second run into the "
                        "same folder will not be detected", path, err.strerror)
            return fd
        try:  # the previous owner may have unlinked the file between our open and flock
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def acquire(path: str | Path) -> None:
    """Take the lock file ``path`` for this process, or raise :class:`LockError`.

    Under torchrun the ranks of one job share their output folders: rank 0 alone takes the
    lock (and writes); the other ranks take nothing.
    """
    if not distributed.is_main():  # rank 0 holds the job's locks
        return
    path = Path(path)
    key = str(path.resolve())
    if key in _HELD:
        _HELD[key].count += 1
        return
    if fcntl is None:  # pragma: no cover
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = _open_locked(path)
    except OSError as err:  # read-only, permission, a file where the folder should be
        raise ConfigError(f"cannot write into the output folder {path.parent} "
                          f"({err.strerror or err}); choose a writable --out") from None
    if fd is None:
        holder = _describe(path.read_text() if path.exists() else "")
        raise LockError(f"{path.parent} is in use by {holder}; wait for it to finish, or use "
                        f"another output folder (if that process is gone, delete {path})")
    previous = os.read(fd, 4096).decode(errors="replace")
    if _live_owner(previous):
        os.close(fd)
        raise LockError(f"{path.parent} is locked by {_describe(previous)}, which is still "
                        f"running; wait for it to finish, or use another output folder (if "
                        f"that process does not use this folder, delete {path})")
    if previous.strip():
        log.warning("taking over the stale lock %s left by %s, which is no longer running",
                    path, _describe(previous))
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(_owner_record()) + "\n").encode(), 0)
    except OSError as err:  # a full disk (ENOSPC), a quota: no lock file left behind
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)
        if is_disk_full(err, path.parent):
            raise ArtifactError(f"no space left on the device holding {path.parent} (writing "
                                f"its lock file); free some space and rerun the same command"
                                ) from None
        raise ConfigError(f"cannot write into the output folder {path.parent} "
                          f"({err.strerror or err}); choose a writable --out") from None
    _HELD[key] = _Held(fd, 1)
    if path.name == LOCK_NAME:  # a folder lock: no write of ours is in flight there now
        removed = remove_orphans(path.parent)
        if removed:
            log.info("removed %d temporary files left by killed writes in %s", removed,
                     path.parent)


def release(path: str | Path) -> None:
    """Let go of ``path`` (the outermost release removes the file and drops the flock)."""
    key = str(Path(path).resolve())
    held = _HELD.get(key)
    if held is None:
        return
    held.count -= 1
    if held.count > 0:
        return
    del _HELD[key]
    try:
        os.unlink(key)  # unlink while still locked: a waiting opener then retries (inode check)
    except FileNotFoundError:
        pass
    os.close(held.fd)


class lock_path:  # noqa: N801 - used like a function in `with`
    """Context manager holding the lock file ``path``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __enter__(self) -> Path:
        acquire(self.path)
        return self.path

    def __exit__(self, *exc: object) -> None:
        release(self.path)


def lock_folder(folder: str | Path) -> lock_path:
    """Hold ``<folder>/.lock`` (the folder is created)."""
    return lock_path(Path(folder) / LOCK_NAME)


def lock_folder_if(needed: bool, folder: str | Path) -> contextlib.AbstractContextManager:
    """:func:`lock_folder` when ``needed``, else nothing (a finished store read by many)."""
    return lock_folder(folder) if needed else contextlib.nullcontext()


def lock_file(file: str | Path) -> contextlib.AbstractContextManager:
    """Hold ``.<name>.lock`` beside the output file ``file`` (reports of eval/baseline)."""
    file = Path(file)
    if file.exists() and not file.is_file():  # /dev/null, a pipe: nothing to share
        return contextlib.nullcontext()
    return lock_path(file.parent / f".{file.name}.lock")


def locks_output(arg: str) -> Callable:
    """Decorator: hold the lock of the folder passed as argument ``arg`` during the call.
    A folder the lock created is removed again when the call fails and left it empty.

    Example:
        >>> @locks_output("out_dir")
        ... def work(cfg, out_dir): ...
    """

    def wrap(func: Callable) -> Callable:
        sig = inspect.signature(func)

        @functools.wraps(func)
        def locked(*args: Any, **kwargs: Any) -> Any:
            folder = Path(sig.bind(*args, **kwargs).arguments[arg])
            existed = folder.exists()
            try:
                with lock_folder(folder):
                    return func(*args, **kwargs)
            except BaseException:
                if not existed:  # a call refused before any output leaves no empty folder
                    with contextlib.suppress(OSError):  # not empty: something was written
                        folder.rmdir()
                raise

        return locked

    return wrap
