"""The distilled dataset on disk: save, load, import and export.

A distilled set is a directory holding three files:

- ``tensors.pt``: a plain dict of tensors (``images`` (N, C, H, W), ``labels`` (N,) int64 or
  (N, K) float soft logits, optionally ``lr`` (a 0-d tensor) and the ZCA state as ``zca.<key>``),
  read back with ``torch.load(weights_only=True)`` so that no pickled code ever runs;
- ``meta.json``: format version, method, the full :class:`DatasetInfo`, ipc, image space, label
  kind, lr, shapes, the producing version and free-form ``extra``;
- ``config.yaml``: the resolved config that produced the set (when known).

Every file is written atomically (temporary file + ``os.replace``), ``meta.json`` last, so a
directory with a ``meta.json`` is complete. The legacy MTT/DATM triple
(``images_best.pt`` / ``labels_best.pt`` / ``lr_best.pt``) is read and written by
:mod:`.legacy`, the ECCV-2024 challenge tensor file by :mod:`.challenge_export`, PNG grids by
:mod:`.grids`.

Example:
    >>> ds = DistilledSet(images, labels, lr=0.01, info=info, space="normalized", ipc=10,
    ...                   method="mtt")                                  # doctest: +SKIP
    >>> save_distilled(ds, "runs/cifar10_ipc10")                         # doctest: +SKIP
    >>> ds2 = load_distilled("runs/cifar10_ipc10")                       # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from datadistill import __version__, distributed
from datadistill.data import DatasetInfo, dataset_info
from datadistill.data.zca import ZCA
from datadistill.errors import ArtifactError
from datadistill.io import atomic_write, save_tensors
from datadistill.labels import hard_labels, is_soft

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
SPACES = ("normalized", "zca", "raw")
TENSORS_FILE = "tensors.pt"
META_FILE = "meta.json"
CONFIG_FILE = "config.yaml"


@dataclass
class DistilledSet:
    """A distilled dataset and everything needed to evaluate or view it.

    Example:
        >>> ds = DistilledSet(torch.zeros(20, 1, 8, 8), torch.arange(10).repeat_interleave(2),
        ...                   lr=None, info=info, space="normalized", ipc=2,
        ...                   method="random")                          # doctest: +SKIP
    """

    images: torch.Tensor  # (N, C, H, W) in `space`
    labels: torch.Tensor  # (N,) int64 hard or (N, K) float soft logits
    lr: float | None  # learned step size, if any
    info: DatasetInfo
    space: str  # "normalized" | "zca" | "raw"
    ipc: int
    method: str
    zca: ZCA | None = None
    config: dict | None = None  # resolved config that produced it
    extra: dict = field(default_factory=dict)  # free-form meta (iteration, accuracy...)

    @property
    def soft_labels(self) -> bool:
        """True when labels are (N, K) logits rather than (N,) class indices."""
        return is_soft(self.labels)

    @property
    def hard_labels(self) -> torch.Tensor:
        """(N,) int64 class indices; the argmax of soft logits."""
        return hard_labels(self.labels)


# ----------------------------------------------------------------------------- validation


def check_set(
    images: torch.Tensor,
    labels: torch.Tensor,
    info: DatasetInfo,
    space: str,
    ipc: int | None,
    where: str,
) -> None:
    """Raise ArtifactError unless images/labels/ipc agree with `info`; `where` names the file."""
    problem = info.shape_problem(images)
    if problem:
        raise ArtifactError(f"{where}: {problem}; pass the dataset the set was distilled from")
    if not images.is_floating_point():
        raise ArtifactError(f"{where}: images have dtype {images.dtype}; convert them to float32")
    n, k = images.shape[0], info.num_classes
    if labels.dim() == 1:
        if labels.dtype != torch.int64:
            raise ArtifactError(
                f"{where}: hard labels have dtype {labels.dtype}; convert them "
                "to int64 class indices"
            )
        if labels.numel() and (labels.min() < 0 or labels.max() >= k):
            raise ArtifactError(
                f"{where}: labels outside [0, {k}) for {info.name!r}; check "
                "that the labels belong to this dataset"
            )
    elif labels.dim() != 2 or labels.shape[1] != k or not labels.is_floating_point():
        raise ArtifactError(
            f"{where}: labels have shape {tuple(labels.shape)} and dtype {labels.dtype}; "
            f"expected ({n},) int64 or ({n}, {k}) float logits for {info.name!r}"
        )
    if labels.shape[0] != n:
        raise ArtifactError(
            f"{where}: {n} images but {labels.shape[0]} labels; save images "
            "and labels of the same set together"
        )
    if space not in SPACES:
        raise ArtifactError(f"{where}: unknown image space {space!r}; use one of {SPACES}")
    if ipc is not None and labels.dim() == 1 and ipc * k != n:
        raise ArtifactError(
            f"{where}: ipc {ipc} x {k} classes != {n} images; set ipc to "
            f"N / classes = {n / k:g} or fix the images"
        )


def infer_ipc(n: int, info: DatasetInfo, ipc: int | None, where: str) -> int:
    """ipc given, else N / classes (N must divide evenly for a class-balanced set)."""
    if ipc is not None:
        return ipc
    if n % info.num_classes:
        raise ArtifactError(
            f"{where}: {n} images are not a multiple of {info.num_classes} "
            "classes; pass ipc= explicitly"
        )
    return n // info.num_classes


# ----------------------------------------------------------------------------- file helpers


def save_tensor_file(obj: Any, path: Path) -> None:
    save_tensors(obj, path)


def _save_text(text: str, path: Path) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def load_tensor_file(path: Path) -> Any:
    """torch.load with weights_only=True, turning every failure into an ArtifactError."""
    if not path.is_file():
        raise ArtifactError(f"{path}: file not found; check the path or re-create the set")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not zipfile.is_zipfile(path):  # garbage read as pickle opcodes, not a payload
            raise ArtifactError(
                f"{path}: not a torch tensor file; the file is corrupt or "
                "truncated, re-create or re-download it"
            ) from exc
        raise ArtifactError(
            f"{path}: refused to load, the file holds pickled objects other than tensors "
            "(weights_only=True). Only load files you trust; re-save them as plain tensors"
        ) from exc
    except Exception as exc:  # torch raises RuntimeError/EOFError/... for damaged zips
        raise ArtifactError(
            f"{path}: cannot be read as a torch tensor file ({exc}); the file "
            "is corrupt or truncated, re-create or re-download it"
        ) from exc


def _plain(value: Any) -> Any:
    """Convert to JSON/YAML-safe builtins (tuples -> lists, tensors -> lists, paths -> str)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _info_from_dict(d: dict, where: str) -> DatasetInfo:
    """Rebuild a DatasetInfo from meta.json, tolerating fields added or removed since."""
    known = {f.name for f in dataclasses.fields(DatasetInfo)}
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in known}
    try:
        return DatasetInfo(**kwargs)
    except TypeError as exc:
        raise ArtifactError(f"{where}: 'info' is incomplete ({exc}); re-save the set") from exc


def resolve_info(dataset: str | DatasetInfo) -> DatasetInfo:
    return dataset if isinstance(dataset, DatasetInfo) else dataset_info(dataset)


# ----------------------------------------------------------------------------- save / load


def save_distilled(ds: DistilledSet, directory: str | Path) -> Path:
    """Write `ds` to `directory` (created if needed) and return the directory.

    Example:
        >>> save_distilled(ds, "runs/mtt_cifar10_ipc10")                   # doctest: +SKIP
    """
    out = Path(directory)
    check_set(ds.images, ds.labels, ds.info, ds.space, ds.ipc, f"{out / TENSORS_FILE}")
    if ds.space == "zca" and ds.zca is None:  # load_distilled would refuse the files
        raise ArtifactError(f"{out}: a ZCA-space set needs its ZCA state to be saved; pass "
                            "zca= (for instance prepare(dataset, zca=True).zca)")
    out.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {
        "images": ds.images.detach().cpu().contiguous(),
        "labels": ds.labels.detach().cpu().contiguous(),
    }
    if ds.lr is not None:
        tensors["lr"] = torch.tensor(float(ds.lr), dtype=torch.float64)
    zca_scalars: dict[str, Any] = {}
    if ds.zca is not None:
        for key, value in ds.zca.state_dict().items():
            if isinstance(value, torch.Tensor):
                tensors[f"zca.{key}"] = value.detach().cpu().contiguous()
            else:  # floats such as eps live in meta.json
                zca_scalars[key] = value
    save_tensor_file(tensors, out / TENSORS_FILE)
    if ds.config is not None:
        _save_text(yaml.safe_dump(_plain(ds.config), sort_keys=False), out / CONFIG_FILE)
    else:  # a stale config from an earlier save would describe another set
        (out / CONFIG_FILE).unlink(missing_ok=True)
    meta = {
        "format_version": FORMAT_VERSION,
        "method": ds.method,
        "dataset": ds.info.name,
        "info": _plain(ds.info),
        "ipc": int(ds.ipc),
        "space": ds.space,
        "labels": "soft" if ds.soft_labels else "hard",
        "lr": None if ds.lr is None else float(ds.lr),
        "shapes": {"images": list(ds.images.shape), "labels": list(ds.labels.shape)},
        "zca": None if ds.zca is None else _plain(zca_scalars),
        "produced_by": f"datadistill {__version__}",
        "extra": _plain(ds.extra),
        **distributed.metadata(),  # how many processes made it (torchrun)
    }
    _save_text(json.dumps(meta, indent=2) + "\n", out / META_FILE)  # last: marks completeness
    return out


def set_digest(ds: DistilledSet) -> str:
    """SHA-256 of a set's images, labels and lr: names the exact set a report scored.

    Example:
        >>> set_digest(load_distilled("runs/x/distill/best"))[:12]        # doctest: +SKIP
        '3f1c0a9be2d4'
    """
    import hashlib

    h = hashlib.sha256()
    for t in (ds.images, ds.labels):
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes())
    h.update(repr(ds.lr).encode())
    return h.hexdigest()


def _read_meta(path: Path) -> dict:
    if not path.is_file():
        raise ArtifactError(
            f"{path}: file not found; is this a distilled-set directory? "
            "(legacy images_best.pt sets load with load_any(..., dataset=...))"
        )
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(
            f"{path}: not valid JSON ({exc}); the file is corrupt, re-save the set"
        ) from exc
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if not isinstance(version, int):
        raise ArtifactError(
            f"{path}: no integer 'format_version'; this is not a datadistill "
            "distilled set, re-save it with save_distilled"
        )
    if version > FORMAT_VERSION:
        raise ArtifactError(
            f"{path}: format_version {version} is newer than this datadistill "
            f"reads ({FORMAT_VERSION}); upgrade datadistill"
        )
    for key in ("method", "info", "ipc", "space"):
        if key not in meta:
            raise ArtifactError(
                f"{path}: missing key {key!r}; the file is incomplete, re-save the set"
            )
    kinds = {"method": str, "info": dict, "space": str}
    for key, kind in kinds.items():
        if not isinstance(meta[key], kind):
            raise ArtifactError(f"{path}: {key!r} is {meta[key]!r}, not a {kind.__name__}; the "
                                "file was edited or damaged, re-save the set")
    ipc = meta["ipc"]
    if not isinstance(ipc, int) or isinstance(ipc, bool) or ipc < 1:
        raise ArtifactError(f"{path}: 'ipc' is {ipc!r}, not a positive integer; the file was "
                            "edited or damaged, re-save the set")
    if not isinstance(meta.get("zca"), (dict, type(None))):
        raise ArtifactError(f"{path}: 'zca' is {meta['zca']!r}, not a mapping; re-save the set")
    if meta["space"] == "zca" and meta.get("zca") is None:
        raise ArtifactError(
            f"{path}: the images are said to be in ZCA space but the set holds no ZCA state, so "
            "nothing shows which whitening they belong to (a set in normalised pixels marked "
            "'zca' would be scored on whitened test images); re-save it with its ZCA state, or "
            "set 'space' to what the images are")
    return meta


def _float32(t: torch.Tensor, where: str, what: str) -> torch.Tensor:
    """float16/bfloat16/float64 tensors as float32, the dtype every network here trains in."""
    if t.is_floating_point() and t.dtype != torch.float32:
        log.info("%s: %s of dtype %s read as float32", where, what, t.dtype)
        return t.float()
    return t


def _stored_lr(value: Any, where: str) -> float:
    """The learned step size: one finite positive number."""
    if not isinstance(value, torch.Tensor) or value.numel() != 1 or not value.is_floating_point():
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ArtifactError(f"{where}: 'lr' should be one number (the learned step size), got "
                            f"{shape}; re-save the set, or give --lr")
    lr = float(value)
    if not math.isfinite(lr) or lr <= 0:
        raise ArtifactError(f"{where}: the stored lr is {lr}; re-save the set, or give --lr")
    return lr


def load_distilled(directory: str | Path) -> DistilledSet:
    """Read a directory written by :func:`save_distilled`, validating every file.

    Example:
        >>> ds = load_distilled("runs/mtt_cifar10_ipc10")                  # doctest: +SKIP
    """
    root = Path(directory)
    meta_path, tensor_path = root / META_FILE, root / TENSORS_FILE
    meta = _read_meta(meta_path)
    info = _info_from_dict(meta["info"], str(meta_path))
    tensors = load_tensor_file(tensor_path)
    if not isinstance(tensors, dict) or "images" not in tensors or "labels" not in tensors:
        raise ArtifactError(
            f"{tensor_path}: expected a dict with 'images' and 'labels'; "
            "re-save the set with save_distilled"
        )
    images = _float32(tensors["images"], str(tensor_path), "images")
    labels = _float32(tensors["labels"], str(tensor_path), "labels")
    check_set(images, labels, info, meta["space"], int(meta["ipc"]), str(tensor_path))
    zca_state = {k[4:]: v for k, v in tensors.items() if k.startswith("zca.")}
    zca = None
    if meta.get("zca") is not None:
        zca = ZCA.from_state_dict({**meta["zca"], **zca_state})
        if zca.mean.numel() != images[0].numel():
            raise ArtifactError(
                f"{tensor_path}: the ZCA state is for {zca.mean.numel()}-d "
                f"images, not {tuple(images.shape[1:])}; re-save the set"
            )
    config = None
    if (root / CONFIG_FILE).is_file():
        try:
            config = yaml.safe_load((root / CONFIG_FILE).read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ArtifactError(
                f"{root / CONFIG_FILE}: not valid YAML ({exc}); fix or delete the file"
            ) from exc
    lr = _stored_lr(tensors["lr"], str(tensor_path)) if "lr" in tensors else None
    return DistilledSet(
        images=images,
        labels=labels,
        lr=lr,
        info=info,
        space=meta["space"],
        ipc=int(meta["ipc"]),
        method=str(meta["method"]),
        zca=zca,
        config=config,
        extra=dict(meta.get("extra") or {}),
    )


def class_major(ds: DistilledSet) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, C, H, W) and hard labels (N,) stably sorted by class."""
    labels = ds.hard_labels.cpu()
    order = torch.sort(labels, stable=True).indices
    return ds.images.detach().cpu()[order], labels[order]
