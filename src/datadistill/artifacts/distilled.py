"""The distilled dataset on disk: save, load, import and export.

A distilled set is a directory holding three files:

- ``tensors.pt``: a plain dict of tensors (``images`` (N, C, H, W), ``labels`` (N,) int64 or
  (N, K) float soft logits, optionally ``lr`` (a 0-d tensor) and the ZCA state as ``zca.<key>``),
  read back with ``torch.load(weights_only=True)`` so that no pickled code ever runs;
- ``meta.json``: format version, method, the full :class:`DatasetInfo`, ipc, image space, label
  kind, lr, shapes, the producing version and free-form ``extra``;
- ``config.yaml``: the resolved config that produced the set (when known).

Every file is written atomically (temporary file + ``os.replace``), ``meta.json`` last, so a
directory with a ``meta.json`` is complete. Exports: the legacy MTT/DATM triple
(``images_best.pt`` / ``labels_best.pt`` / ``lr_best.pt``), the ECCV-2024 challenge tensor
file and a PNG grid with one row per class.

Example:
    >>> ds = DistilledSet(images, labels, lr=0.01, info=info, space="normalized", ipc=10,
    ...                   method="mtt")                                  # doctest: +SKIP
    >>> save_distilled(ds, "runs/cifar10_ipc10")                         # doctest: +SKIP
    >>> ds2 = load_any("runs/cifar10_ipc10")                             # doctest: +SKIP
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
from datadistill.data import DatasetInfo, dataset_info, denormalize, normalize
from datadistill.data.zca import ZCA
from datadistill.errors import ArtifactError, CompatibilityError
from datadistill.io import atomic_write, save_tensors
from datadistill.labels import hard_labels, is_soft

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
SPACES = ("normalized", "zca", "raw")
TENSORS_FILE = "tensors.pt"
META_FILE = "meta.json"
CONFIG_FILE = "config.yaml"
LEGACY_FILES = ("images_best.pt", "labels_best.pt", "lr_best.pt")


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


def _check_set(
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


def _infer_ipc(n: int, info: DatasetInfo, ipc: int | None, where: str) -> int:
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


def _save_tensor_file(obj: Any, path: Path) -> None:
    save_tensors(obj, path)


def _save_text(text: str, path: Path) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def _load_tensor_file(path: Path) -> Any:
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


def _resolve_info(dataset: str | DatasetInfo) -> DatasetInfo:
    return dataset if isinstance(dataset, DatasetInfo) else dataset_info(dataset)


# ----------------------------------------------------------------------------- save / load


def save_distilled(ds: DistilledSet, directory: str | Path) -> Path:
    """Write `ds` to `directory` (created if needed) and return the directory.

    Example:
        >>> save_distilled(ds, "runs/mtt_cifar10_ipc10")                   # doctest: +SKIP
    """
    out = Path(directory)
    _check_set(ds.images, ds.labels, ds.info, ds.space, ds.ipc, f"{out / TENSORS_FILE}")
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
    _save_tensor_file(tensors, out / TENSORS_FILE)
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
    tensors = _load_tensor_file(tensor_path)
    if not isinstance(tensors, dict) or "images" not in tensors or "labels" not in tensors:
        raise ArtifactError(
            f"{tensor_path}: expected a dict with 'images' and 'labels'; "
            "re-save the set with save_distilled"
        )
    images = _float32(tensors["images"], str(tensor_path), "images")
    labels = _float32(tensors["labels"], str(tensor_path), "labels")
    _check_set(images, labels, info, meta["space"], int(meta["ipc"]), str(tensor_path))
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


# ----------------------------------------------------------------------------- legacy triple


def _legacy_dir(directory_or_file: str | Path) -> Path:
    path = Path(directory_or_file)
    return path.parent if path.name in LEGACY_FILES else path


def import_legacy(
    directory_or_file: str | Path,
    dataset: str | DatasetInfo,
    *,
    zca: ZCA | None = None,
    space: str | None = None,
    ipc: int | None = None,
    method: str = "legacy",
) -> DistilledSet:
    """Import an official MTT/FTD/DATM/PAD ``images_best.pt`` / ``labels_best.pt`` /
    ``lr_best.pt`` triple (lr optional). Labels may be hard (N,) or soft (N, K) logits.

    Sets distilled with ``--zca`` live in ZCA space; the files do not record it, so say so
    with ``space="zca"`` (implied when `zca` is given). Otherwise images are normalised.

    Example:
        >>> ds = import_legacy("logged_files/CIFAR10/run", "cifar10", space="zca",
        ...                    zca=real.zca)                               # doctest: +SKIP
    """
    root = _legacy_dir(directory_or_file)
    info = _resolve_info(dataset)
    space = space or ("zca" if zca is not None else "normalized")
    if space == "zca" and zca is None:
        log.warning(
            "%s: ZCA-space set imported without its ZCA state; it can be evaluated "
            "on a ZCA test set but not viewed as pixels",
            root,
        )
    images = _legacy_tensor(root / LEGACY_FILES[0]).float()
    labels = _legacy_tensor(root / LEGACY_FILES[1])
    if labels.dim() == 1:  # MTT saves int64; some forks saved float class indices
        labels = labels.round().long()
    else:
        labels = labels.float()
    lr = None
    if (root / LEGACY_FILES[2]).is_file():
        lr = float(_legacy_tensor(root / LEGACY_FILES[2]).reshape(-1)[0])
    where = str(root / LEGACY_FILES[0])
    ipc = _infer_ipc(images.shape[0], info, ipc, where)
    _check_set(images, labels, info, space, ipc, where)
    return DistilledSet(
        images=images,
        labels=labels,
        lr=lr,
        info=info,
        space=space,
        ipc=ipc,
        method=method,
        zca=zca,
        extra={"imported_from": str(root)},
    )


def _legacy_tensor(path: Path) -> torch.Tensor:
    obj = _load_tensor_file(path)
    if isinstance(obj, list) and len(obj) == 1:  # some forks save [tensor]
        obj = obj[0]
    if not isinstance(obj, torch.Tensor):
        raise ArtifactError(
            f"{path}: expected one tensor, found {type(obj).__name__}; "
            "save the tensor itself with torch.save"
        )
    return obj.detach()


def export_legacy(ds: DistilledSet, directory: str | Path) -> Path:
    """Write the official triple (``lr_best.pt`` only when the set has an lr)."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    _save_tensor_file(ds.images.detach().cpu().clone(), out / LEGACY_FILES[0])
    _save_tensor_file(ds.labels.detach().cpu().clone(), out / LEGACY_FILES[1])
    if ds.lr is not None:
        _save_tensor_file(torch.tensor(float(ds.lr)), out / LEGACY_FILES[2])
    return out


def load_any(
    path: str | Path, dataset: str | DatasetInfo | None = None, **legacy_kwargs: Any
) -> DistilledSet:
    """Load a datadistill directory, or a legacy triple (then `dataset` is required).

    Example:
        >>> ds = load_any("logged_files/run", dataset="cifar10")          # doctest: +SKIP
    """
    root = _legacy_dir(path)
    if (root / META_FILE).is_file():
        return load_distilled(root)
    if (root / LEGACY_FILES[0]).is_file():
        if dataset is None:
            raise ArtifactError(
                f"{root / LEGACY_FILES[0]}: a legacy set does not record its "
                "dataset; pass dataset=<name>"
            )
        return import_legacy(root, dataset, **legacy_kwargs)
    raise ArtifactError(
        f"{root}: neither {META_FILE} nor {LEGACY_FILES[0]} found; point to a "
        "directory written by save_distilled or holding images_best.pt"
    )


# ----------------------------------------------------------------------------- challenge


def _class_major(ds: DistilledSet) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, C, H, W) and hard labels (N,) stably sorted by class."""
    labels = ds.hard_labels.cpu()
    order = torch.sort(labels, stable=True).indices
    return ds.images.detach().cpu()[order], labels[order]


def export_challenge(ds: DistilledSet, path: str | Path, *, drop_soft_labels: bool = False) -> Path:
    """Write the ECCV-2024 challenge file: a float tensor (N, C, H, W) in class-major order,
    normalised with the dataset statistics. The evaluator implies labels from the order
    ([0]*ipc + [1]*ipc + ...), so every class needs exactly ipc images.

    Example:
        >>> export_challenge(ds, "submission/cifar100.pt")                 # doctest: +SKIP
    """
    if ds.space == "zca":
        raise CompatibilityError(
            "export_challenge: the set lives in ZCA space but the "
            "challenge evaluates normalised pixels; distil without ZCA"
        )
    if ds.soft_labels and not drop_soft_labels:
        raise CompatibilityError(
            "export_challenge: the set has soft labels, which the "
            "challenge ignores; pass drop_soft_labels=True to export it "
            "with argmax classes"
        )
    images, labels = _class_major(ds)
    counts = torch.bincount(labels, minlength=ds.info.num_classes)
    if not bool((counts == ds.ipc).all()):
        bad = int(torch.nonzero(counts != ds.ipc)[0])
        raise CompatibilityError(
            f"export_challenge: class {bad} has {int(counts[bad])} "
            f"images, the challenge needs exactly ipc={ds.ipc} per class"
        )
    if ds.space == "raw":
        images = normalize(images, ds.info)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    _save_tensor_file(images.float().contiguous(), out)
    return out


# ----------------------------------------------------------------------------- PNG grid


def _to_pixels(
    images: torch.Tensor, space: str, info: DatasetInfo | None, zca: ZCA | None
) -> torch.Tensor:
    """(N, C, H, W) in `space` -> (N, C, H, W) viewable pixels in [0, 1]."""
    x = images.detach().cpu().float()
    if space == "zca":
        if zca is not None:
            x = zca.invert(x)  # back to raw [0,1] pixels
        else:  # no way back to pixels: stretch each image to its own range
            log.warning("save_grid: ZCA-space images without ZCA state; min-max scaling each")
            lo = x.amin(dim=(1, 2, 3), keepdim=True)
            hi = x.amax(dim=(1, 2, 3), keepdim=True)
            x = (x - lo) / (hi - lo).clamp_min(1e-8)
    elif space == "normalized":
        if info is None:
            raise ArtifactError("save_grid: normalised images need info= to be denormalised")
        x = denormalize(x, info)
    return x.clamp(0.0, 1.0)


def save_grid(
    images_or_ds: torch.Tensor | DistilledSet,
    path: str | Path,
    *,
    nrow: int | None = None,
    info: DatasetInfo | None = None,
    space: str | None = None,
    zca: ZCA | None = None,
    padding: int = 2,
) -> Path:
    """Write a PNG grid; for a DistilledSet one row per class (nrow = ipc images per row).

    A tensor is taken as normalised when `info` is given, else as raw pixels; pass `space`
    to override. The grid is (rows*H + (rows+1)*padding) x (nrow*W + (nrow+1)*padding).

    Example:
        >>> save_grid(ds, "runs/mtt/grid.png")                             # doctest: +SKIP
    """
    if isinstance(images_or_ds, DistilledSet):
        ds = images_or_ds
        images, _ = _class_major(ds)
        info, space, zca = ds.info, ds.space, ds.zca or zca
        nrow = nrow or ds.ipc
    else:
        images = images_or_ds
        space = space or ("normalized" if info is not None else "raw")
        nrow = nrow or math.ceil(math.sqrt(images.shape[0]))
    pixels = _to_pixels(images, space, info, zca)  # (N, C, H, W) in [0, 1]
    grid = _tile(pixels, nrow, padding)  # (C, GH, GW)
    array = (grid.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
    from PIL import Image  # Pillow is only needed here

    img = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: img.save(tmp, format="PNG"))
    return out


def _tile(pixels: torch.Tensor, nrow: int, padding: int) -> torch.Tensor:
    """(N, C, H, W) -> (C, rows*H + (rows+1)*pad, nrow*W + (nrow+1)*pad) on a black ground."""
    n, c, h, w = pixels.shape
    if c not in (1, 3):
        raise ArtifactError(
            f"save_grid: {c}-channel images cannot be written as PNG; pass 1- or 3-channel images"
        )
    rows = max(1, math.ceil(n / nrow))
    grid = torch.zeros(c, rows * h + (rows + 1) * padding, nrow * w + (nrow + 1) * padding)
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[:, top : top + h, left : left + w] = pixels[i]
    return grid
