"""The legacy MTT/DATM distilled-set triple: ``images_best.pt``, ``labels_best.pt``,
``lr_best.pt`` (as the official repositories save them), imported into and exported from a
:class:`~datadistill.artifacts.distilled.DistilledSet`; :func:`load_any` reads either form.

The triple records no dataset, space or IPC, so importing names them. Files are read with
``weights_only`` loading only (no pickled code runs).

Example:
    >>> ds = load_any("logged_files/run", dataset="cifar10")          # doctest: +SKIP
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from datadistill.artifacts.distilled import (
    META_FILE,
    DistilledSet,
    check_set,
    infer_ipc,
    load_distilled,
    load_tensor_file,
    resolve_info,
    save_tensor_file,
)
from datadistill.data import DatasetInfo
from datadistill.data.zca import ZCA
from datadistill.errors import ArtifactError

log = logging.getLogger(__name__)

LEGACY_FILES = ("images_best.pt", "labels_best.pt", "lr_best.pt")


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
    info = resolve_info(dataset)
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
    ipc = infer_ipc(images.shape[0], info, ipc, where)
    check_set(images, labels, info, space, ipc, where)
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
    obj = load_tensor_file(path)
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
    save_tensor_file(ds.images.detach().cpu().clone(), out / LEGACY_FILES[0])
    save_tensor_file(ds.labels.detach().cpu().clone(), out / LEGACY_FILES[1])
    if ds.lr is not None:
        save_tensor_file(torch.tensor(float(ds.lr)), out / LEGACY_FILES[2])
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


