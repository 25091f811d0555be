"""The on-disk expert store: one file per expert trajectory plus a self-describing meta.json.

MTT (Cazenavette et al., CVPR 2022, Sec. 3.1) saves the parameters of every expert after every
epoch; the distiller reads a pair (tau*_t, tau*_{t+M}) per iteration. Layout::

    <dir>/meta.json           format_version, dataset, model (+ kwargs), parameter names and
                              shapes in flattening order, optimiser, lr, epochs, batch, seed,
                              ZCA on/off, DSA strategy, classes, storage dtype, produced_by
    <dir>/expert_0000.pt      torch.save({"params": (E+1, P), "test_acc": (E+1,)}), epoch 0 =
                              the random init; written atomically (tmp file + os.replace)

Files are read with ``torch.load(..., weights_only=True, mmap=True)``: reading two epochs of an
expert touches only those rows. Unlike the official pickled ``replay_buffer_{n}.pt`` lists,
the store records how the experts were made, so a mismatched distillation is an error.

Example:
    >>> store = ExpertStore("runs/cifar10/experts")                          # doctest: +SKIP
    >>> len(store), store.epochs, store.load(0).shape                       # doctest: +SKIP
    (100, 50, torch.Size([51, 320010]))
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from datadistill.errors import ArtifactError, CompatibilityError
from datadistill.io import load_error_reason, save_tensors, write_json
from datadistill.models.functional import param_spec

FORMAT_VERSION = 1
META_FILE = "meta.json"
DTYPES = {"float32": torch.float32, "float16": torch.float16}
_EXPERT_RE = re.compile(r"^expert_(\d{4,})\.pt$")


def required_epochs(max_start_epoch: int, expert_epochs: int) -> int:
    """Training epochs an expert needs so that every draw of the start-epoch window fits.

    Start epochs are drawn from [.., max_start_epoch), upper bound exclusive (MTT's
    ``np.random.randint(0, max_start_epoch)``), so the largest is ``max_start_epoch - 1``; its
    target is ``expert_epochs`` later, and snapshots run 0..epochs. The official code
    therefore accepts ``max_start_epoch + expert_epochs <= epochs + 1``. This is the one rule
    for the distiller, the pipeline check and :meth:`ExpertStore.epoch_pair`.

    Example:
        >>> required_epochs(max_start_epoch=20, expert_epochs=2)
        21
    """
    return max_start_epoch - 1 + expert_epochs


def expert_path(directory: str | Path, index: int) -> Path:
    """``<directory>/expert_{index:04d}.pt``."""
    return Path(directory) / f"expert_{index:04d}.pt"


atomic_save = save_tensors  # all or nothing: an interrupted write never leaves a half file


def write_meta(directory: Path, meta: dict) -> None:
    """Atomically write ``meta.json``."""
    write_json(meta, directory / META_FILE)


def save_expert(directory: Path, index: int, params: torch.Tensor, test_acc: torch.Tensor,
                dtype: str = "float32") -> Path:
    """Write expert ``index``: params (E+1, P) stored as ``dtype``, test_acc (E+1,) float32."""
    path = expert_path(directory, index)
    record = {"params": params.detach().to("cpu", DTYPES[dtype]).contiguous(),
              "test_acc": test_acc.detach().to("cpu", torch.float32).contiguous()}
    atomic_save(record, path)
    return path


class ExpertStore:
    """Read access to an expert store directory.

    Example:
        >>> store = ExpertStore("runs/digits/experts")                        # doctest: +SKIP
        >>> theta0, target = store.epoch_pair(0, start=2, span=2)            # doctest: +SKIP
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        path = self.directory / META_FILE
        if not path.is_file():
            raise ArtifactError(f"{path} not found; is {self.directory} an expert store? Train "
                                "one with `datadistill experts` (train_experts), name another "
                                "with --experts STORE, or convert official buffers with "
                                "import_replay_buffers.")
        try:
            self.meta: dict = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ArtifactError(f"{path} is not valid JSON ({err}); re-create the store.") from None
        version = self.meta.get("format_version")
        if version != FORMAT_VERSION:
            raise ArtifactError(f"{path}: expert store format_version {version!r}, this "
                                f"datadistill reads {FORMAT_VERSION}; re-create the store.")
        self.indices = self._scan()

    def _scan(self) -> list[int]:
        found = sorted(int(m.group(1)) for p in self.directory.iterdir()
                       if (m := _EXPERT_RE.match(p.name)))
        return found

    def __len__(self) -> int:
        return len(self.indices)

    def __repr__(self) -> str:
        return (f"ExpertStore({str(self.directory)!r}, experts={len(self)}, "
                f"epochs={self.epochs}, params={self.num_params})")

    @property
    def epochs(self) -> int:
        """Training epochs E per expert (each file holds E + 1 snapshots)."""
        return int(self.meta["epochs"])

    @property
    def num_params(self) -> int:
        return int(self.meta["num_params"])

    def _record(self, i: int) -> dict[str, torch.Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(f"expert {i} out of range: the store has {len(self)} experts")
        path = expert_path(self.directory, self.indices[i])
        try:
            record = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as err:  # truncated or foreign file
            raise ArtifactError(f"{path} cannot be read ({load_error_reason(err)}); delete it and "
                                "resume train_experts to re-create it.") from None
        if not isinstance(record, dict) or not isinstance(record.get("params"), torch.Tensor):
            raise ArtifactError(f"{path} holds no 'params' tensor; delete it and resume "
                                "train_experts to re-create it.")
        shape = tuple(record["params"].shape)
        if shape != (self.epochs + 1, self.num_params):
            raise ArtifactError(f"{path} holds params {shape}, meta.json says "
                                f"({self.epochs + 1}, {self.num_params}); re-create it.")
        return record

    def check_files(self, count: int) -> None:
        """Read the header of each of the first ``count`` expert files (memory-mapped: no
        parameter is read) and check its shapes, so a truncated, empty or foreign file is
        found before the distillation starts, not when it is first sampled."""
        for i in range(min(count, len(self))):
            record = self._record(i)
            if not isinstance(record.get("test_acc"), torch.Tensor) or tuple(
                    record["test_acc"].shape) != (self.epochs + 1,):
                raise ArtifactError(f"{expert_path(self.directory, self.indices[i])} has no "
                                    f"test_acc of {self.epochs + 1} epochs; re-create it.")

    def check_complete(self, using: int | None) -> None:
        """The store holds the experts its meta.json announces (``num_experts``), or the
        caller asked for no more than those present (``using``: distill.max_experts). A store
        that `experts` is still writing is otherwise refused: distilling from 3 of 8 experts
        is a different run."""
        intended = self.meta.get("num_experts")
        if not isinstance(intended, int) or len(self) >= intended:
            return
        if using is not None and using <= len(self):
            return
        raise CompatibilityError(
            f"the expert store {self.directory} holds {len(self)} of the {intended} experts its "
            "meta.json announces (`datadistill experts` may still be writing it, or was "
            "stopped); wait for it, resume it with the same command, or set "
            f"distill.max_experts={len(self)} to distill from the experts present")

    def load(self, i: int) -> torch.Tensor:
        """(E+1, P) float32 parameters of the i-th expert (epoch 0 = init)."""
        return self._record(i)["params"].float()

    def test_acc(self, i: int) -> torch.Tensor:
        """(E+1,) test accuracy per epoch (NaN for imported buffers)."""
        return self._record(i)["test_acc"].float()

    def epoch_pair(self, i: int, start: int, span: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(theta*_start, theta*_{start+span}) of expert i, float32 (P,) copies."""
        if start < 0 or required_epochs(start + 1, span) > self.epochs:
            raise CompatibilityError(f"epochs {start}..{start + span} requested but the experts "
                                     f"have {self.epochs}; lower max_start_epoch/expert_epochs.")
        params = self._record(i)["params"]
        return params[start].float().clone(), params[start + span].float().clone()

    def check_compatible(self, model: nn.Module, info: Any = None, zca: bool | None = None) -> None:
        """CompatibilityError unless ``model``/dataset ``info``/``zca`` match the store."""

        spec = param_spec(model)
        m = self.meta
        problems = []
        if spec.numel != self.num_params:
            problems.append(f"the model has {spec.numel} parameters, the experts "
                            f"{self.num_params} (model {m.get('model')} {m.get('model_kwargs')})")
        elif [list(s) for s in spec.shapes] != m.get("param_shapes"):
            problems.append("the parameter shapes/order differ from the experts' model")
        if info is not None:
            if info.name != m.get("dataset"):
                problems.append(f"dataset {info.name!r} but the experts were trained on "
                                f"{m.get('dataset')!r}")
            if info.num_classes != m.get("num_classes"):
                problems.append(f"{info.num_classes} classes but the experts have "
                                f"{m.get('num_classes')}")
        if zca is not None and bool(zca) != bool(m.get("zca")):
            problems.append(f"zca={zca} but the experts were trained with zca={m.get('zca')} "
                            "(ZCA space and normalised space are different inputs)")
        if problems:
            raise CompatibilityError(
                f"expert store {self.directory} does not fit: " + "; ".join(problems)
                + ". Use experts trained for this dataset/model/ZCA setting, or train new ones.")
