"""What a run has finished, kept on disk so an interrupted run redoes none of it.

- :class:`RunCache`: each finished evaluation network (one of the N runs of a report) is
  appended to ``eval_runs.jsonl`` as soon as it is tested, under a fingerprint of everything
  that decides its result (images, labels, lr, epochs, batch, model, seed, protocol, device).
  A resumed evaluation takes the finished runs from there and trains only the missing ones;
  every run draws from its own seeds, so the report equals an uninterrupted one.
- :class:`StageClock`: seconds spent per stage, summed over every call of the command
  (``seconds.json``), so ``eval.json`` reports the whole cost of a resumed run.

Example:
    >>> import tempfile, pathlib
    >>> cache = RunCache(pathlib.Path(tempfile.mkdtemp()) / "eval_runs.jsonl", "distilled")
    >>> cache.put("fp", 0, 0.91, 1.5); cache.get("fp", 0)
    (0.91, 1.5)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from datadistill import distributed
from datadistill.errors import DatadistillError
from datadistill.io import read_json, write_json

log = logging.getLogger(__name__)


def fingerprint(images: torch.Tensor, labels: torch.Tensor, settings: dict[str, Any]) -> str:
    """A hex digest of the training inputs (images (N, C, H, W), labels) and settings.

    Images read from a disk cache (:class:`~datadistill.data.cache.CachedImages`) are named
    by the cache's chunk checksums instead of being read whole.
    """
    h = hashlib.sha256()
    for t in (images, labels):
        if hasattr(t, "content_digest"):
            h.update(t.content_digest().encode())
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return h.hexdigest()[:32]


class RunCache:
    """Finished evaluation runs of one report entry (``key``) in a JSON-lines file.

    Under several processes rank 0 alone reads and appends the file, and
    :func:`datadistill.runs.run_all` hands its rows to the other ranks (which so never read a
    line that rank 0 is still writing).
    """

    def __init__(self, path: Path, key: str) -> None:
        self.path, self.key = Path(path), key
        self.rows: dict[tuple[str, int], tuple[float, float]] = {}
        if self.path.is_file() and distributed.is_main():
            self._read()

    def _read(self) -> None:
        lines = self.path.read_text().splitlines()
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:  # a torn line from a killed write: that run is redone
                log.warning("%s: ignoring the unreadable line %d", self.path, n)
                continue
            if row.get("key") == self.key:
                self.rows[(row["fingerprint"], row["run"])] = (row["accuracy"], row["seconds"])

    def get(self, fp: str, run: int) -> tuple[float, float] | None:
        """(accuracy, seconds) of a finished run, or None."""
        return self.rows.get((fp, run))

    def put(self, fp: str, run: int, accuracy: float, seconds: float) -> None:
        self.rows[(fp, run)] = (accuracy, seconds)
        if not distributed.is_main():
            return
        row = {"key": self.key, "fingerprint": fp, "run": run, "accuracy": accuracy,
               "seconds": seconds}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:  # a line per run; a torn last line is skipped on read
            f.write("\n" + json.dumps(row) + "\n")


class StageClock:
    """Seconds per stage summed over every call, in ``seconds.json`` of the run folder."""

    def __init__(self, path: Path, *, fresh: bool = False) -> None:
        self.path = Path(path)
        self.seconds: dict[str, float] = {}
        if self.path.is_file() and not fresh:
            with contextlib.suppress(Exception):  # a damaged record only loses old timings
                self.seconds = {k: float(v) for k, v in read_json(self.path).items()}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Add the time spent in the block to ``name``, also when it is interrupted (Ctrl-C,
        SIGTERM), but not when it was refused (a DatadistillError: nothing is written)."""
        t0 = time.time()
        try:
            yield
        except DatadistillError:
            raise
        except BaseException:
            self._add(name, time.time() - t0)
            raise
        self._add(name, time.time() - t0)

    def _add(self, name: str, seconds: float) -> None:
        self.seconds[name] = round(self.seconds.get(name, 0.0) + seconds, 1)
        if distributed.is_main():  # under torchrun, rank 0 keeps the record
            write_json(self.seconds, self.path)

    def report(self) -> dict[str, float]:
        """The summed seconds per stage and their total."""
        return {**self.seconds, "total": round(sum(self.seconds.values()), 1)}
