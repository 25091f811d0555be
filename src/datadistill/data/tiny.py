"""Tiny ImageNet (200 classes, 64x64) from the stock `tiny-imagenet-200` layout.

The official folder is read as it comes, with no reorganisation of `val/`:

    tiny-imagenet-200/wnids.txt, words.txt
    tiny-imagenet-200/train/<wnid>/images/*.JPEG
    tiny-imagenet-200/val/images/*.JPEG + val/val_annotations.txt (file, wnid, box)

Class indices follow the sorted wnids, which is what torchvision's ImageFolder on `train/`
gives (the MTT/DATM convention). The official test split has no labels, so "test" is an
alias for "val". If only `tiny-imagenet-200.zip` is present it is extracted (safely) first.

Decoding 110,000 JPEGs takes minutes, so the decoded pixels are cached as uint8 `.npy`
files in `tiny-imagenet-200/datadistill-cache/`, next to the list of files they came from;
the cache is used only when that list still matches the folder.

Example:
    >>> split = load_split(Path("data"), "val")  # doctest: +SKIP
    >>> split.images.shape  # doctest: +SKIP
    (10000, 3, 64, 64)
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from datadistill.data.download import ensure_file
from datadistill.data.folder import decode_images
from datadistill.data.info import DatasetInfo, LoadedSplit
from datadistill.data.safe_archive import extract_zip
from datadistill.errors import DatasetError

logger = logging.getLogger(__name__)

FOLDER = "tiny-imagenet-200"
ARCHIVE = "tiny-imagenet-200.zip"
CACHE = "datadistill-cache"
SIZE = (64, 64)

# Class names are generic until the files are read (they come from wnids.txt / words.txt).
INFO = DatasetInfo(
    name="tiny_imagenet",
    num_classes=200,
    channels=3,
    image_size=SIZE,
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    class_names=tuple(f"class_{i:03d}" for i in range(200)),
)


def find_folder(root: Path, *, download: bool = False, progress: bool = False) -> Path:
    """The `tiny-imagenet-200` folder under `root` (or `root` itself), extracting the zip."""
    for folder in (root / FOLDER, root):
        if (folder / "wnids.txt").is_file():
            return folder
    archive = ensure_file(
        "tiny_imagenet", ARCHIVE, [root], download=download, download_dir=root, progress=progress
    )
    extract_zip(archive, root)
    if not (root / FOLDER / "wnids.txt").is_file():
        raise DatasetError(f"{archive} holds no {FOLDER}/wnids.txt; it is not Tiny ImageNet")
    return root / FOLDER


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise DatasetError(
            f"{path} is missing; the Tiny ImageNet folder is incomplete: "
            "extract the official zip again"
        )
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def class_names(folder: Path, wnids: list[str]) -> tuple[str, ...]:
    """First name of each wnid in words.txt (the wnid itself when words.txt lacks it)."""
    words = {}
    if (folder / "words.txt").is_file():
        for line in _read_lines(folder / "words.txt"):
            wnid, _, text = line.partition("\t")
            words[wnid] = text.split(",")[0].strip()
    return tuple(words.get(w) or w for w in wnids)


def _train_files(folder: Path, wnids: list[str]) -> tuple[list[str], list[int]]:
    files, labels = [], []
    for index, wnid in enumerate(wnids):
        directory = folder / "train" / wnid / "images"
        if not directory.is_dir():
            raise DatasetError(f"{directory} is missing; extract the official zip again")
        names = sorted(n for n in os.listdir(directory) if n.lower().endswith(".jpeg"))
        files += [f"train/{wnid}/images/{n}" for n in names]
        labels += [index] * len(names)
    return files, labels


def _val_files(folder: Path, wnids: list[str]) -> tuple[list[str], list[int]]:
    """Val files ordered by (class, file name), as ImageFolder on a reorganised val/ would."""
    index = {w: i for i, w in enumerate(wnids)}
    entries = []
    annotations = folder / "val" / "val_annotations.txt"
    for line in _read_lines(annotations):
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in index:
            raise DatasetError(
                f"{annotations}: line {line!r} does not name a file and a known wnid; the "
                "file is corrupt: extract the official zip again"
            )
        entries.append((index[fields[1]], fields[0]))
    entries.sort()
    return [f"val/images/{name}" for _, name in entries], [label for label, _ in entries]


def _cached(cache: Path, split: str, files: list[str]) -> np.ndarray | None:
    """The cached pixels when the cache was made from exactly `files`, else None."""
    listing, pixels = cache / f"{split}_files.txt", cache / f"{split}_images_uint8.npy"
    if not (listing.is_file() and pixels.is_file()):
        return None
    if listing.read_text().splitlines() != files:
        logger.info("Tiny ImageNet %s cache is stale; decoding the images again", split)
        return None
    try:
        images = np.load(pixels, allow_pickle=False)
    except (OSError, ValueError) as err:
        logger.warning("ignoring unreadable cache %s (%s)", pixels, err)
        return None
    return images if images.shape == (len(files), 3, *SIZE) else None


def _write_cache(cache: Path, split: str, files: list[str], images: np.ndarray) -> None:
    """Write pixels then listing, each atomically; a read-only data folder only logs."""
    try:
        cache.mkdir(exist_ok=True)
        tmp = cache / f".{split}_images_uint8.npy.tmp"
        with open(tmp, "wb") as fh:
            np.save(fh, images, allow_pickle=False)
        os.replace(tmp, cache / f"{split}_images_uint8.npy")
        tmp = cache / f".{split}_files.txt.tmp"
        tmp.write_text("\n".join(files) + "\n")
        os.replace(tmp, cache / f"{split}_files.txt")
    except OSError as err:
        logger.warning(
            "cannot write the Tiny ImageNet cache in %s (%s); every load will "
            "decode the JPEGs again",
            cache,
            err,
        )


def load_split(
    root: Path, split: str, *, download: bool = False, progress: bool = False
) -> LoadedSplit:
    """Images (N, 3, 64, 64) uint8 and labels (N,) int64; split "train", "val" or "test"."""
    split = "val" if split == "test" else split
    folder = find_folder(root, download=download, progress=progress)
    wnids = sorted(_read_lines(folder / "wnids.txt"))
    files, labels = (_train_files if split == "train" else _val_files)(folder, wnids)
    images = _cached(folder / CACHE, split, files)
    if images is None:
        images = decode_images(
            [folder / f for f in files], "RGB", SIZE, resize=False, progress=progress
        )
        _write_cache(folder / CACHE, split, files, images)
    info = INFO.with_classes(class_names(folder, wnids))
    return LoadedSplit(images, np.asarray(labels, dtype=np.int64), info)
