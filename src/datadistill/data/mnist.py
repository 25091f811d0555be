"""MNIST and Fashion-MNIST from the standard IDX files, gzipped or raw.

Files are looked for in `root`, then in the usual sub-folders (`root/mnist`,
`root/fashion-mnist`, torchvision's `root/MNIST/raw`, ...). Every file is validated: magic
number, dimensions and length, so a truncated download fails with a `DatasetError` that
names the file instead of producing garbage images.

Example:
    >>> split = load_split("mnist", Path("/work/shared/data"), "test")  # doctest: +SKIP
    >>> split.images.shape  # doctest: +SKIP
    (10000, 1, 28, 28)
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

import datadistill.data.safe_archive as safe_archive  # its limits are read at call time
from datadistill.data.download import ensure_file
from datadistill.data.info import DIGIT_NAMES, DSA_DEFAULT, DSA_NO_FLIP, DatasetInfo, LoadedSplit
from datadistill.errors import DatasetError

IDX_UBYTE = 0x08  # IDX type code for unsigned bytes, the only type MNIST uses

MNIST_INFO = DatasetInfo("mnist", num_classes=10, channels=1, image_size=(28, 28),
                         mean=(0.1307,), std=(0.3081,), class_names=DIGIT_NAMES,
                         dsa_strategy=DSA_NO_FLIP)
FASHION_INFO = DatasetInfo("fashion_mnist", num_classes=10, channels=1, image_size=(28, 28),
                           mean=(0.2861,), std=(0.3530,), dsa_strategy=DSA_DEFAULT,
                           class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"))

# Sub-folders of `root` searched after `root` itself; the first is where downloads go.
_FOLDERS = {
    "mnist": ("mnist", "MNIST/raw"),
    "fashion_mnist": ("fashion-mnist", "fashion_mnist", "FashionMNIST/raw"),
}
_PREFIX = {"train": "train", "test": "t10k"}


def _read_bytes(path: Path) -> bytes:
    """File contents, gunzipped when the file starts with the gzip magic bytes."""
    data = path.read_bytes()
    if data[:2] != b"\x1f\x8b":
        return data
    try:
        return _gunzip(data, path)
    except EOFError as err:
        raise DatasetError(
            f"{path}: the gzip stream ends early, the file is truncated: delete it and "
            "download it again"
        ) from err
    except (gzip.BadGzipFile, zlib.error) as err:
        raise DatasetError(
            f"{path}: not a valid gzip file ({err}), the file is corrupt: delete it and "
            "download it again"
        ) from err


def _gunzip(data: bytes, path: Path) -> bytes:
    """gzip.decompress with a bound on the output (a tiny bomb cannot fill the memory)."""
    limit = min(safe_archive.MAX_IN_MEMORY_BYTES, safe_archive.MAX_EXPANDED_BYTES)  # memory bound
    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)  # gzip header and trailer
    out = inflate.decompress(data, limit + 1)
    safe_archive.check_expanded_size(len(out), path, limit)
    if not inflate.eof:
        raise EOFError("the gzip stream ends early")
    return out


def read_idx(path: Path, ndim: int, what: str) -> np.ndarray:
    """Read an unsigned-byte IDX file with `ndim` dimensions; `what` names its payload.

    Example:
        >>> read_idx(Path("t10k-labels-idx1-ubyte.gz"), 1, "labels")  # doctest: +SKIP
    """
    raw = _read_bytes(path)
    expected_magic = (IDX_UBYTE << 8) | ndim
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(
            f"{path}: {len(raw)} bytes, shorter than the {header}-byte IDX header; the file "
            "is truncated: delete it and download it again"
        )
    magic = struct.unpack(">I", raw[:4])[0]
    if magic != expected_magic:
        raise DatasetError(
            f"{path}: magic number 0x{magic:08x}, expected 0x{expected_magic:08x} (IDX "
            f"unsigned bytes, {ndim} dims); this is not the right file or it is corrupt"
        )
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected, found = int(np.prod(dims)), len(raw) - header
    if found < expected:
        raise DatasetError(
            f"{path}: expected {expected} bytes of {what}, found {found}; the file is "
            "truncated: delete it and download it again"
        )
    if found > expected:
        raise DatasetError(
            f"{path}: {found - expected} bytes after the {expected} bytes of {what}; the file "
            "is corrupt: delete it and download it again"
        )
    return np.frombuffer(raw, dtype=np.uint8, count=expected, offset=header).reshape(dims)


def _find(name: str, root: Path, stem: str, download: bool, progress: bool) -> Path:
    """Path of `stem` or `stem.gz` in root or its usual sub-folders."""
    folders = [root] + [root / sub for sub in _FOLDERS[name]]
    for folder in folders:
        for filename in (stem + ".gz", stem):
            if (folder / filename).is_file():
                return folder / filename
    return ensure_file(
        name,
        stem + ".gz",
        folders,
        download=download,
        download_dir=folders[1],
        progress=progress,
    )


def load_split(
    name: str, root: Path, split: str, *, download: bool = False, progress: bool = False
) -> LoadedSplit:
    """Images (N, 1, 28, 28) uint8 and labels (N,) int64 of `name` ("mnist"/"fashion_mnist")."""
    info = MNIST_INFO if name == "mnist" else FASHION_INFO
    prefix = _PREFIX[split]
    image_path = _find(name, root, f"{prefix}-images-idx3-ubyte", download, progress)
    label_path = _find(name, root, f"{prefix}-labels-idx1-ubyte", download, progress)
    images = read_idx(image_path, 3, "pixels")
    labels = read_idx(label_path, 1, "labels")
    if images.shape[1:] != info.image_size:
        raise DatasetError(
            f"{image_path}: images are {images.shape[1]}x{images.shape[2]}, expected "
            f"{info.image_size[0]}x{info.image_size[1]}; this is not a {name} file"
        )
    if len(labels) != len(images):
        raise DatasetError(
            f"{label_path} has {len(labels)} labels but {image_path} has {len(images)} "
            "images; the two files do not belong together: download both again"
        )
    if len(labels) and labels.max() >= info.num_classes:
        raise DatasetError(
            f"{label_path}: label {int(labels.max())} is out of range 0..{info.num_classes - 1}; "
            "the file is corrupt: delete it and download it again"
        )
    return LoadedSplit(images[:, None], labels.astype(np.int64), info)
