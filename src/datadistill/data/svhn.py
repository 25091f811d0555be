"""SVHN (cropped digits) from the official `train_32x32.mat` / `test_32x32.mat` files.

The files hold X as (32, 32, 3, N) uint8 and y as (N, 1) with labels 1..10, where 10 stands
for the digit 0. Read with `scipy.io.loadmat` (MATLAB v5 format, no code execution).

Example:
    >>> split = load_split(Path("data"), "test")  # doctest: +SKIP
    >>> split.images.shape  # doctest: +SKIP
    (26032, 3, 32, 32)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io

from datadistill.data.download import ensure_file
from datadistill.data.info import DIGIT_NAMES, DSA_NO_FLIP, DatasetInfo, LoadedSplit
from datadistill.errors import DatasetError

INFO = DatasetInfo("svhn", num_classes=10, channels=3, image_size=(32, 32),
                   mean=(0.4377, 0.4438, 0.4728), std=(0.1980, 0.2010, 0.1970),
                   class_names=DIGIT_NAMES, dsa_strategy=DSA_NO_FLIP)


def _load_mat(path: Path) -> dict:
    try:
        return scipy.io.loadmat(path)
    except Exception as err:  # noqa: BLE001 - loadmat raises many types on a bad file
        raise DatasetError(
            f"{path} is not a readable .mat file ({type(err).__name__}: {err}); the file is "
            "truncated or corrupt: delete it and download it again"
        ) from err


def load_split(
    root: Path, split: str, *, download: bool = False, progress: bool = False
) -> LoadedSplit:
    """Images (N, 3, 32, 32) uint8 and labels (N,) int64 in 0..9."""
    path = ensure_file(
        "svhn",
        f"{split}_32x32.mat",
        [root, root / "svhn"],
        download=download,
        download_dir=root / "svhn",
        progress=progress,
    )
    mat = _load_mat(path)
    if "X" not in mat or "y" not in mat:
        raise DatasetError(f"{path} lacks the 'X' or 'y' array; this is not an SVHN file")
    x, y = np.asarray(mat["X"]), np.asarray(mat["y"]).reshape(-1)
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != y.shape[0]:
        raise DatasetError(
            f"{path}: X is {x.shape} and y has {y.shape[0]} labels, expected X (32, 32, 3, N) "
            "and N labels; the file is corrupt: delete it and download it again"
        )
    labels = y.astype(np.int64)
    if len(labels) and (labels.min() < 0 or labels.max() > 10):
        raise DatasetError(f"{path}: labels outside 1..10; the file is corrupt")
    labels[labels == 10] = 0  # SVHN writes the digit 0 as class 10
    images = np.ascontiguousarray(x.transpose(3, 2, 0, 1), dtype=np.uint8)  # (N, 3, 32, 32)
    return LoadedSplit(images, labels, INFO)
