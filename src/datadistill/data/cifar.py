"""CIFAR-10 and CIFAR-100 from the official python pickle batches.

The batches are read from the extracted folder (`cifar-10-batches-py`, `cifar-100-python`)
or straight from the downloaded `.tar.gz` in memory. They are pickles, so they go through
`safe_pickle.safe_loads`, never a plain `pickle.load`.

CIFAR-100 is normalised with its own statistics, as in the DC/DSA protocol and the ECCV-2024
challenge; note that the MTT/FTD/DATM code reuses the CIFAR-10 statistics for CIFAR-100
(only the non-ZCA path is affected).

Example:
    >>> split = load_split("cifar10", Path("data"), "test")  # doctest: +SKIP
    >>> split.images.shape  # doctest: +SKIP
    (10000, 3, 32, 32)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from datadistill.data.download import ensure_file
from datadistill.data.info import DatasetInfo, LoadedSplit
from datadistill.data.safe_archive import read_tar_members
from datadistill.data.safe_pickle import safe_loads
from datadistill.errors import DatasetError

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

# The 100 fine labels in label order (alphabetical), as in the `meta` file.
CIFAR100_CLASSES = tuple(
    """
apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly
camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile
cup dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp
lawn_mower leopard lion lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree
orange orchid otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine possum
rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper snail snake spider
squirrel streetcar sunflower sweet_pepper table tank telephone television tiger tractor train
trout tulip turtle wardrobe whale willow_tree wolf woman worm
""".split()
)

CIFAR10_INFO = DatasetInfo("cifar10", num_classes=10, channels=3, image_size=(32, 32),
                           mean=(0.4914, 0.4822, 0.4465), std=(0.2023, 0.1994, 0.2010),
                           class_names=CIFAR10_CLASSES)
CIFAR100_INFO = DatasetInfo("cifar100", num_classes=100, channels=3, image_size=(32, 32),
                            mean=(0.5071, 0.4866, 0.4409), std=(0.2673, 0.2564, 0.2762),
                            class_names=CIFAR100_CLASSES)


@dataclass(frozen=True)
class _Layout:
    """Where one CIFAR variant keeps its batches and which keys hold what."""

    info: DatasetInfo
    folder: str  # extracted folder name, also the prefix of tar members
    archive: str  # downloaded file name
    batches: dict[str, tuple[str, ...]]
    meta: str  # file with the class names
    label_key: str
    names_key: str


_LAYOUTS = {
    "cifar10": _Layout(
        CIFAR10_INFO,
        "cifar-10-batches-py",
        "cifar-10-python.tar.gz",
        {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
        "batches.meta",
        "labels",
        "label_names",
    ),
    "cifar100": _Layout(
        CIFAR100_INFO,
        "cifar-100-python",
        "cifar-100-python.tar.gz",
        {"train": ("train",), "test": ("test",)},
        "meta",
        "fine_labels",
        "fine_label_names",
    ),
}


def _str_keys(obj: Any, source: str) -> dict[str, Any]:
    """A batch dict with str keys (Python-2 batches decoded as bytes have bytes keys)."""
    if not isinstance(obj, dict):
        raise DatasetError(f"{source}: expected a dict, found {type(obj).__name__}; corrupt file")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _read_files(
    layout: _Layout, root: Path, names: tuple[str, ...], download: bool, progress: bool
) -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, source) from the extracted folder, else from the .tar.gz."""
    for folder in (root / layout.folder, root):
        if all((folder / n).is_file() for n in names if n != layout.meta):
            return {
                n: ((folder / n).read_bytes(), str(folder / n))
                for n in names
                if (folder / n).is_file()
            }
    archive = ensure_file(
        layout.info.name,
        layout.archive,
        [root],
        download=download,
        download_dir=root,
        progress=progress,
    )
    members = read_tar_members(archive, {f"{layout.folder}/{n}" for n in names})
    found = {
        n: (members[f"{layout.folder}/{n}"], f"{archive}:{layout.folder}/{n}")
        for n in names
        if f"{layout.folder}/{n}" in members
    }
    missing = [n for n in names if n not in found and n != layout.meta]
    if missing:
        raise DatasetError(
            f"{archive} lacks {', '.join(missing)}; the archive is incomplete or not "
            f"{layout.archive}: delete it and download it again"
        )
    return found


def _parse_batch(blob: bytes, source: str, layout: _Layout) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3, 32, 32) uint8 images and (N,) int64 labels of one batch."""
    batch = _str_keys(safe_loads(blob, source), source)
    if "data" not in batch or layout.label_key not in batch:
        raise DatasetError(
            f"{source}: keys {sorted(batch)} lack 'data' or {layout.label_key!r}; this is not "
            f"a {layout.info.name} batch"
        )
    data, labels = batch["data"], _int_labels(batch[layout.label_key], source)
    if not isinstance(data, np.ndarray):
        raise DatasetError(f"{source}: data is a {type(data).__name__}, not an array; the file "
                           "is corrupt: delete it and download it again")
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DatasetError(
            f"{source}: data is {data.dtype} {data.shape}, expected uint8 (N, 3072); "
            "the file is corrupt: delete it and download it again"
        )
    if labels.shape != (data.shape[0],):
        raise DatasetError(
            f"{source}: {labels.size} labels for {data.shape[0]} images; corrupt file"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= layout.info.num_classes):
        raise DatasetError(
            f"{source}: labels outside 0..{layout.info.num_classes - 1}; corrupt file"
        )
    return data.reshape(-1, 3, 32, 32), labels  # rows are R plane, G plane, B plane


def _int_labels(raw: Any, source: str) -> np.ndarray:
    """(N,) int64 labels from a list of ints or an integer array; anything else is refused."""
    ok = (isinstance(raw, list) and all(type(v) is int for v in raw)) or (
        isinstance(raw, np.ndarray) and raw.dtype.kind in "iu" and raw.ndim == 1)
    if not ok:
        raise DatasetError(f"{source}: labels are not a list of integers; the file is corrupt: "
                           "delete it and download it again")
    return np.asarray(raw, dtype=np.int64)


def _class_names(blob: bytes | None, source: str, layout: _Layout) -> tuple[str, ...]:
    """Class names from the meta file, or the built-in list when it is absent."""
    if blob is None:
        return layout.info.class_names
    meta = _str_keys(safe_loads(blob, source), source)
    names = meta.get(layout.names_key)
    if not isinstance(names, list) or len(names) != layout.info.num_classes:
        raise DatasetError(
            f"{source}: {layout.names_key!r} is missing or does not hold "
            f"{layout.info.num_classes} names; corrupt file"
        )
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)


def load_split(
    name: str, root: Path, split: str, *, download: bool = False, progress: bool = False
) -> LoadedSplit:
    """Images (N, 3, 32, 32) uint8 and labels (N,) int64 of "cifar10" or "cifar100"."""
    layout = _LAYOUTS[name]
    names = layout.batches[split] + (layout.meta,)
    files = _read_files(layout, root, names, download, progress)
    parts = [_parse_batch(*files[n], layout) for n in layout.batches[split]]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    meta = files.get(layout.meta)
    class_names = _class_names(meta[0] if meta else None, meta[1] if meta else "", layout)
    return LoadedSplit(images, labels, layout.info.with_classes(class_names))
