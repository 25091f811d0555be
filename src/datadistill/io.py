"""Atomic, safe file helpers: every store, checkpoint and distilled set writes through them.

Writes go to a temporary file in the target folder and are renamed into place, so an
interrupted run never leaves a half-written file that a resume would trust. Tensor files
are read with ``weights_only=True`` (no unpickling of arbitrary objects).

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> write_json({"a": 1}, d / "m.json"); read_json(d / "m.json")
    {'a': 1}
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from datadistill.errors import ArtifactError

TMP_SUFFIX = ".tmp"
# Temporary files are ".datadistill-<pid>-<name>.<random>.tmp" beside their target: a name
# no user picks, so the clean-up of orphans never touches a user's own ".notes.tmp"; the pid
# says which process wrote it.
TMP_PREFIX = ".datadistill-"
_TMP_NAME = re.compile(r"^\.datadistill-(\d+)-.+\.tmp$")


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_name)`` on a temporary file beside ``path``, then rename it into place.

    The file gets the permissions of a plain ``open()`` (0666 less the umask), not the
    0600 of ``mkstemp``, so a group can share stores. A full disk is an ArtifactError in
    words.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{os.getpid()}-{path.name}.",
                               suffix=TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~current_umask())
        write(tmp)
        os.replace(tmp, path)
    except Exception as err:
        if is_disk_full(err, path.parent):
            raise ArtifactError(
                f"no space left on the device holding {path.parent} while writing {path.name}; "
                "free some space and rerun the same command (finished work is kept)") from None
        raise
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def current_umask() -> int:
    """The process umask, read without changing it where /proc allows."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # no /proc: set and restore
    os.umask(mask)
    return mask


def is_disk_full(err: BaseException, folder: Path) -> bool:
    """True when ``err`` comes from a full disk (torch.save reports it as "unexpected pos")."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if not isinstance(err, (OSError, RuntimeError)):
        return False
    try:
        return shutil.disk_usage(folder).free < 16 * 2**20
    except OSError:
        return False


def remove_orphans(folder: Path) -> int:
    """Delete temporary files left by killed atomic writes under ``folder``; their number.

    Looks two levels deep (a run folder, its stages, their sets); subfolders holding a
    ``.lock`` of their own (another owner) are left alone, and so is every file whose name
    is not one :func:`atomic_write` makes, or whose writer is this process or still alive.
    Call only while holding ``folder``'s lock, so no write of this folder is in flight.
    """
    removed = 0
    for root, dirs, files in os.walk(folder):
        depth = len(Path(root).relative_to(folder).parts)
        if depth >= 2:
            dirs[:] = []
        if depth and ".lock" in files:
            dirs[:] = []
            continue
        for name in files:
            match = _TMP_NAME.match(name)
            if match and not pid_alive(int(match.group(1))):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(root, name))
                    removed += 1
    return removed


def pid_alive(pid: int) -> bool:
    """True when ``pid`` is this process or a running one on this host."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return pid > 0  # exists (another user's), or an absurd number: leave it
    return True


def save_tensors(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` atomically (obj: tensors, numbers, strings, nested dicts)."""
    atomic_write(Path(path), lambda tmp: torch.save(obj, tmp))


def load_tensors(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(weights_only=True)``; a missing or unreadable file is an ArtifactError."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path} does not exist; re-run the step that writes it")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise ArtifactError(f"{path} cannot be read ({load_error_reason(err)}); delete it and "
                            "re-run") from None


def load_error_reason(err: BaseException) -> str:
    """A short reason for a failed ``torch.load`` (torch's weights-only advice, which
    suggests unsafe loading, does not apply to a damaged file)."""
    text = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
    if "Weights only load failed" in text or not any(c.isalpha() for c in text):
        return "truncated, damaged or not a tensor file"
    return text


def write_json(data: dict, path: str | Path) -> None:
    """Write ``data`` as indented JSON, atomically."""
    text = json.dumps(data, indent=2, sort_keys=False) + "\n"
    atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text))


def read_json(path: str | Path) -> dict:
    """Read a JSON mapping; a missing or malformed file is an ArtifactError."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path} does not exist; re-run the step that writes it")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{path} is not valid JSON ({err}); delete it and re-run") from None


class ReportNotSaved(ArtifactError):
    """A finished report could not be written where asked; it went to a fallback file.

    ``text`` holds the report itself (the CLI prints it), ``fallback`` the file it went to.
    """

    def __init__(self, message: str, text: str, fallback: Path | None) -> None:
        super().__init__(message)
        self.text, self.fallback = text, fallback


def write_report(data: dict, path: str | Path) -> Path:
    """Write a finished report as JSON; if that fails, never lose it.

    On failure the report goes to ``$TMPDIR/datadistill-<name>-<pid>.json`` and a
    :class:`ReportNotSaved` carrying the text is raised (the CLI prints it on stdout).
    """
    path = Path(path)
    text = json.dumps(data, indent=2) + "\n"
    try:
        atomic_write(path, lambda tmp: Path(tmp).write_text(text))
        return path
    except (OSError, ArtifactError) as err:
        reason = getattr(err, "strerror", None) or str(err)
    name = f"datadistill-{path.stem}-{os.getpid()}.json"
    fallback: Path | None = Path(tempfile.gettempdir()) / name
    try:
        fallback.write_text(text)
        where = f"it was saved to {fallback} instead and is printed below"
    except OSError:
        fallback, where = None, "it is printed below"
    raise ReportNotSaved(f"could not write the report {path} ({reason}); {where}. Copy it "
                         "where it belongs", text, fallback)
