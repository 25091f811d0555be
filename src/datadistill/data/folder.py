"""Image folders: `root/<class>/<image>` trees decoded with Pillow.

If `root` has a `train/` sub-folder, the split picks `root/train`, `root/test` or
`root/val` (test and val stand in for each other); otherwise `root` is the train split.
Class indices follow the sorted class-folder names of the train split, as in torchvision's
ImageFolder. All images must share one size unless `image_size` is given, in which case
each is resized with bilinear filtering. Mean and std come from the train split.

Example:
    >>> split = load_split(Path("my_images"), "train")  # doctest: +SKIP
    >>> split.info.class_names  # doctest: +SKIP
    ('cat', 'dog')
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from datadistill.data.info import DatasetInfo, LoadedSplit
from datadistill.errors import DatasetError
from datadistill.runtime.progress import progress_bar

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp"}
)
_GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})
_SPLIT_FOLDERS = {"train": ("train",), "test": ("test", "val"), "val": ("val", "test")}


def as_size(image_size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    """(H, W) from an int or a pair; None stays None."""
    if image_size is None:
        return None
    if isinstance(image_size, int):
        return (image_size, image_size)
    return (int(image_size[0]), int(image_size[1]))


# What Pillow raises for a file it cannot or will not decode; DecompressionBombError: more
# than twice Image.MAX_IMAGE_PIXELS (a 20000 x 20000 PNG of a few kB would take 1.2 GB).
_BAD_IMAGE = (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError)


def _decode(path: Path, mode: str, size: tuple[int, int] | None) -> np.ndarray:
    """One image as (C, H, W) uint8 in `mode` ("L" or "RGB"), resized to `size` if given."""
    try:
        with Image.open(path) as img:
            img = img.convert(mode)
            if size is not None and img.size != (size[1], size[0]):
                img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            array = np.asarray(img, dtype=np.uint8)
    except _BAD_IMAGE as err:
        raise DatasetError(
            f"{path} cannot be decoded as an image ({err}); the file is truncated or "
            "corrupt: replace or delete it"
        ) from err
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def image_mode(path: Path) -> str:
    """Pillow mode to decode into: "L" for grayscale files, "RGB" for everything else."""
    try:
        with Image.open(path) as img:
            return "L" if img.mode in _GRAY_MODES else "RGB"
    except _BAD_IMAGE as err:
        raise DatasetError(f"{path} cannot be opened as an image ({err}); replace it") from err


def decode_images(
    paths: list[Path],
    mode: str,
    size: tuple[int, int],
    *,
    resize: bool,
    progress: bool = False,
) -> np.ndarray:
    """Decode `paths` into one (N, C, H, W) uint8 array.

    With `resize=False` every image must already be `size` (H, W); the first that is not
    raises a `DatasetError` naming it.
    """
    channels = 1 if mode == "L" else 3
    out = np.empty((len(paths), channels, *size), dtype=np.uint8)

    def work(i: int) -> None:
        array = _decode(paths[i], mode, size if resize else None)
        if array.shape[1:] != size:
            raise DatasetError(
                f"{paths[i]} is {array.shape[1]}x{array.shape[2]} (HxW) but the other images "
                f"are {size[0]}x{size[1]}; pass image_size=... to resize them all, or fix it"
            )
        out[i] = array

    # Pillow releases the GIL while decoding, so threads give a real speed-up.
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        for _ in progress_bar(
            pool.map(work, range(len(paths))),
            total=len(paths),
            desc="decoding images",
            enabled=progress,
            stage=True,
        ):
            pass
    return out


def image_size_of(path: Path) -> tuple[int, int]:
    """(H, W) of an image file without decoding its pixels."""
    try:
        with Image.open(path) as img:
            return (img.height, img.width)
    except _BAD_IMAGE as err:
        raise DatasetError(f"{path} cannot be opened as an image ({err}); replace it") from err


def _split_dir(root: Path, split: str) -> Path:
    if not root.is_dir():
        raise DatasetError(f"image folder {root} does not exist; pass the folder as root")
    if not (root / "train").is_dir():
        if split == "train":
            return root
        raise DatasetError(
            f"{root} has no train/ sub-folder, so it is one train split; for a {split} split "
            "arrange it as root/train/<class>/... and root/test/<class>/..."
        )
    for name in _SPLIT_FOLDERS[split]:
        if (root / name).is_dir():
            return root / name
    raise DatasetError(f"{root} has no {' or '.join(_SPLIT_FOLDERS[split])}/ sub-folder")


def _class_dirs(directory: Path) -> list[str]:
    names = sorted(p.name for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise DatasetError(
            f"{directory} has no class sub-folders; arrange images as {directory}/<class>/<file>"
        )
    return names


def _list_images(directory: Path, classes: list[str]) -> tuple[list[Path], np.ndarray]:
    """Image paths (sorted within each class) and their class indices (N,) int64."""
    paths: list[Path] = []
    labels: list[int] = []
    for index, name in enumerate(classes):
        found = sorted(
            p
            for p in (directory / name).rglob("*")
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        paths += found
        labels += [index] * len(found)
    if not paths:
        raise DatasetError(
            f"no image files under {directory}; supported: {sorted(IMAGE_EXTENSIONS)}"
        )
    return paths, np.asarray(labels, dtype=np.int64)


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0,1] units of (N, C, H, W) uint8 images.

    Summed in chunks of float64, so a large split never gets a full float64 copy.
    """
    total = np.zeros(images.shape[1])
    squares = np.zeros(images.shape[1])
    for start in range(0, len(images), 4096):
        chunk = images[start : start + 4096].astype(np.float64) / 255.0
        total += chunk.sum(axis=(0, 2, 3))
        squares += (chunk**2).sum(axis=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    # A constant channel would give std 0 and a division by zero in normalize().
    return tuple(float(m) for m in mean), tuple(float(max(v, 1e-6)) for v in std)


# (root, size) -> train-split (mean, std): the test split is normalised with these, and
# decoding the train split again for every test load would be slow.
_TRAIN_STATS: dict[tuple[Path, tuple[int, int] | None], tuple[tuple, tuple]] = {}


def _classes_and_paths(root: Path, split: str) -> tuple[list[str], list[Path], np.ndarray, Path]:
    """Class names (from the train split), the split's image paths and labels, and the
    first train image (which fixes the colour mode and, without resizing, the size)."""
    train_dir = _split_dir(root, "train")
    classes = _class_dirs(train_dir)
    if len(classes) < 2:  # one class: every prediction is right, accuracy 100 % means nothing
        raise DatasetError(f"{train_dir} has {len(classes)} class folder ({classes[0]!r}); "
                           "classification needs at least 2: add a folder per class")
    directory = _split_dir(root, split)
    unknown = sorted(set(_class_dirs(directory)) - set(classes))
    if unknown:
        raise DatasetError(
            f"{directory} has classes {unknown} that the train split {train_dir} lacks; "
            "every class must have a train folder"
        )
    paths, labels = _list_images(directory, classes)
    first_train = paths[0] if directory == train_dir else _list_images(train_dir, classes)[0][0]
    return classes, paths, labels, first_train


def load_split(
    root: Path,
    split: str,
    *,
    image_size: int | tuple[int, int] | None = None,
    progress: bool = False,
) -> LoadedSplit:
    """Images (N, C, H, W) uint8 and labels (N,) int64 of one split of an image tree.

    The train split's statistics are kept in memory per (root, image_size), so loading the
    test split after the train split does not decode the train images twice.
    """
    root, size = Path(root).resolve(), as_size(image_size)
    classes, paths, labels, first_train = _classes_and_paths(root, split)
    mode = image_mode(first_train)
    target = size or image_size_of(first_train)
    images = decode_images(paths, mode, target, resize=size is not None, progress=progress)
    key = (root, size)
    if split == "train":
        _TRAIN_STATS[key] = channel_stats(images)
    elif key not in _TRAIN_STATS:
        load_split(root, "train", image_size=size, progress=progress)
    mean, std = _TRAIN_STATS[key]
    info = DatasetInfo(
        "imagefolder", len(classes), images.shape[1], target, mean, std, tuple(classes)
    )
    return LoadedSplit(images, labels, info)
