"""Resume state of a distillation run: everything needed to continue bit for bit.

A checkpoint holds the synthetic images (and soft labels), the learnable step size, the three
optimisers' states (momentum buffers), the states of every ``torch.Generator`` the run draws
from, the expert order and position, the iteration to run next and the best evaluation so far.
It is written atomically (temporary file + ``os.replace``) and read with
``torch.load(weights_only=True)``: only tensors, numbers, strings, lists and dicts, never code.

Example:
    >>> save_checkpoint("runs/x/checkpoint.pt", state)                      # doctest: +SKIP
    >>> state = load_checkpoint("runs/x/checkpoint.pt")                     # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Any

import torch

from datadistill.errors import ArtifactError
from datadistill.io import atomic_write, load_error_reason, save_tensors

FORMAT_VERSION = 1

log = logging.getLogger(__name__)


@dataclass
class DistillState:
    """The mutable state of the distillation loop (CPU copies when saved)."""

    iteration: int  # next training step to run; evaluation at `iteration` already done
    images: torch.Tensor  # (N, C, H, W)
    labels: torch.Tensor  # (N,) int64 hard or (N, K) soft logits
    syn_lr: torch.Tensor  # () learnable step size
    optimizers: dict[str, dict]  # name -> optimizer.state_dict()
    generators: dict[str, torch.Tensor]  # name -> generator.get_state() (uint8)
    expert_order: torch.Tensor  # (E,) int64 permutation of the experts in use
    expert_pos: int  # index into expert_order of the next expert
    best_accuracy: float | None = None  # best mean evaluation accuracy so far
    best_iteration: int | None = None
    evaluated: int | None = None  # last iteration whose evaluation is done
    ema: dict | None = None  # ImageEMA.state_dict() (FTD) or None
    config: dict = field(default_factory=dict)  # resolved DistillConfig as a plain dict


def save_checkpoint(path: str | Path, state: DistillState) -> Path:
    """Write ``state`` atomically (tensors detached, on the CPU).

    No tensor is copied on the way (``asdict`` would deep-copy each and a clone copy it
    again: 4 copies of the synthetic set and its momentum at the peak, 2 GB at ImageNet-1K
    IPC 10); the file holds the same bytes."""
    path = Path(path)
    fields = {f.name: getattr(state, f.name) for f in dataclass_fields(state)}
    record = {"format_version": FORMAT_VERSION, **_to_cpu(fields)}
    save_tensors(record, path)
    return path


def load_checkpoint(path: str | Path) -> DistillState:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``)."""
    path = Path(path)
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ArtifactError(f"{path} cannot be read as a checkpoint ({load_error_reason(err)}); "
                            "rerun with --restart (Python: resume=False) to start over.") from None
    version = record.pop("format_version", None)
    if version != FORMAT_VERSION:
        raise ArtifactError(f"{path}: checkpoint format_version {version!r}, expected "
                            f"{FORMAT_VERSION}; rerun with --restart (Python: resume=False) "
                            "to start over.")
    return DistillState(**record)


def _to_cpu(obj: Any) -> Any:
    """Tensors detached and on the CPU (a CPU tensor shares its storage), containers rebuilt."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


class MetricsLog:
    """The run's JSON-lines log (``metrics.jsonl``), kept consistent with the checkpoint.

    ``resume_from=None`` starts a fresh log. On resume from a checkpoint at iteration k (k = 0
    included), rows of training steps >= k and of evaluations > k (written by the interrupted
    run after its last checkpoint) are dropped, so every row appears once. A torn last line
    (a kill in the middle of a write) is dropped with a warning; the log is rewritten
    atomically, so a kill during the rewrite loses nothing.
    """

    def __init__(self, path: Path, resume_from: int | None) -> None:
        self.path = path
        rows = []
        if resume_from is not None and path.is_file():
            for row, line in _read_rows(path):
                if row["iteration"] < resume_from or (row.get("eval") and
                                                     row["iteration"] == resume_from):
                    rows.append(line)
        text = "".join(f"{r}\n" for r in rows)
        atomic_write(path, lambda tmp: Path(tmp).write_text(text))

    def write(self, row: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")


def _read_rows(path: Path) -> list[tuple[dict, str]]:
    """(row, line) pairs of a metrics log; a torn last line is dropped with a warning."""
    lines = path.read_text().splitlines()
    out = []
    for n, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or "iteration" not in row:
                raise ValueError("not a metrics row")
        except ValueError:
            if n == len(lines):
                log.warning("%s: ignoring the torn last line %d (an interrupted write): %r",
                            path, n, line[:80])
                break
            raise ArtifactError(f"{path} line {n} is not a metrics row; the log is damaged: "
                                "rerun with --restart to start the distillation over") from None
        out.append((row, line))
    return out
