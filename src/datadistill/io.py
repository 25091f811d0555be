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

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from datadistill.errors import ArtifactError


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_name)`` on a temporary file beside ``path``, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


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
        raise ArtifactError(f"{path} cannot be read ({err}); delete it and re-run") from None


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
