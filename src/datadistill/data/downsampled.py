"""ImageNet-1K at 64 x 64 (`imagenet64`) for trajectory matching, from either form users have.

1. **The downsampled ImageNet release** (Chrabaszcz, Loshchilov and Hutter 2017,
   "A Downsampled Variant of ImageNet"): ``Imagenet64_train_part{1,2}/train_data_batch_{1..10}.npz``
   and ``Imagenet64_val/val_data.npz`` (the folders may also be flat under the root). Each npz
   holds ``data``, uint8 rows of 3 * 64 * 64 pixels in CHW order (all red, then green, then
   blue), and ``labels``, 1-based class ids. The batches are read member by member from the
   zip archive with ``allow_pickle=False`` (an npz carrying Python objects is refused), in
   chunks of rows, so converting them never holds a batch (1.5 GB) in memory. They are
   written once into the project's image cache (:mod:`datadistill.data.cache`: one uint8 file
   (N, 3, 64, 64), labels, checksummed chunks; resumable), the same format the JPEG tree
   converts into.
2. **The project's own ImageNet-1K cache of the ILSVRC-2012 JPEG tree**, resized to 64 px with
   the ``squash`` rule (the whole image, aspect ratio not kept, as the downsampled release
   resizes it; Pillow's antialiased bilinear filter instead of the release's box filter).

Class order: sorted wnids (torchvision's ImageNet order) in both forms. The release numbers its
classes in the order of the ILSVRC-2012 devkit's ``map_clsloc.txt`` (``<wnid> <id> <name>`` per
line); the package ships that mapping (:func:`datadistill.data.imagenet.standard_classes`), so
the release's ids are always mapped to sorted-wnid indices and the classes carry their synset
names: experts and sets made from one form serve the other. A ``map_clsloc.txt`` beside the
batches is not needed; one that is there must agree with the shipped mapping (a copy that
maps an id to another wnid is an error naming it).

Either way the split is read per batch from the cache file (`CachedImages`, positioned reads):
memory never holds the split.

Example:
    >>> split = load_split(Path("/data/imagenet64"), "train")            # doctest: +SKIP
    >>> split.info.image_size, split.info.num_classes                     # doctest: +SKIP
    ((64, 64), 1000)
"""

from __future__ import annotations

import hashlib
import logging
import os
import zipfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

import datadistill.data.cache as cache_mod
import datadistill.data.imagenet as imagenet
from datadistill.data.info import DatasetInfo, LoadedSplit
from datadistill.errors import DatasetError
from datadistill.io import read_json, write_json

logger = logging.getLogger(__name__)

NAME = "imagenet64"
RESOLUTION = 64
ROW = 3 * RESOLUTION * RESOLUTION  # bytes per image row
RULE = "release"  # the cache's resize field for the downsampled release (already 64 px)
CLASS_MAP = "map_clsloc.txt"
CHUNK_ROWS = 4096  # rows per checksummed, resumable chunk (48 MiB)
INFO = DatasetInfo(NAME, imagenet.NUM_CLASSES, 3, (RESOLUTION, RESOLUTION), imagenet.MEAN,
                   imagenet.STD, imagenet.standard_classes().names)


def find_batches(root: Path, split: str) -> list[Path]:
    """The release's npz files of ``split`` under root (flat or in the release's folders),
    in batch order; [] when root holds none."""
    if split == "train":
        found = list(root.glob("train_data_batch_*.npz")) + list(
            root.glob("Imagenet64_train*/train_data_batch_*.npz"))
        return sorted(set(found), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    found = list(root.glob("val_data.npz")) + list(root.glob("Imagenet64_val*/val_data.npz"))
    return sorted(set(found))[:1]


def release_root(root: Path) -> Path | None:
    """The folder holding the release's batches: ``root`` or ``root/imagenet64``; else None."""
    for folder in (root, root / NAME):
        if find_batches(folder, "train"):
            return folder
    return None


def _member(archive: zipfile.ZipFile, name: str, path: Path):
    try:
        return archive.open(f"{name}.npy")
    except KeyError:
        raise DatasetError(f"{path} has no {name!r} array; expected the downsampled ImageNet "
                           "npz batches (arrays 'data' and 'labels')") from None


def read_labels(path: Path) -> np.ndarray:
    """(n,) int64 1-based labels of one npz batch, read without unpickling."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            labels = np.asarray(npz["labels"]).reshape(-1)
    except (ValueError, KeyError, OSError, zipfile.BadZipFile) as err:
        raise DatasetError(f"{path}: cannot read 'labels' without unpickling ({err}); use "
                           "the npz release of downsampled ImageNet") from err
    if labels.dtype.kind not in "iu":
        raise DatasetError(f"{path}: labels are {labels.dtype}, expected integers 1..1000")
    return labels.astype(np.int64)


def iter_rows(path: Path, rows: int) -> Iterator[np.ndarray]:
    """(k, 3*64*64) uint8 blocks of one npz batch's ``data``, k <= rows, streamed from the zip
    member (never the whole array in memory)."""
    with zipfile.ZipFile(path) as archive, _member(archive, "data", path) as f:
        version = np.lib.format.read_magic(f)
        header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                  else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = header(f)
        if dtype != np.uint8 or len(shape) != 2 or shape[1] != ROW or fortran:
            raise DatasetError(f"{path}: 'data' is {dtype} {shape}, expected uint8 (n, {ROW}) "
                               "rows (3 x 64 x 64, CHW); is this the 64 x 64 release?")
        left = shape[0]
        while left:
            k = min(rows, left)
            block = f.read(k * ROW)
            if len(block) != k * ROW:
                raise DatasetError(f"{path} is truncated; download it again")
            yield np.frombuffer(block, dtype=np.uint8).reshape(k, ROW)
            left -= k


def class_order(folder: Path) -> tuple[np.ndarray, tuple[str, ...]]:
    """(release id - 1 -> sorted-wnid index, class names) from the shipped class index; a
    ``map_clsloc.txt`` in folder must agree with it."""
    standard = imagenet.standard_classes()
    order = np.empty(imagenet.NUM_CLASSES, dtype=np.int64)
    order[np.array(standard.release_ids) - 1] = np.arange(imagenet.NUM_CLASSES)
    path = folder / CLASS_MAP
    if path.is_file():
        _check_class_map(path, {standard.wnids[i]: rid
                                for i, rid in enumerate(standard.release_ids)})
    return order, standard.names


def _check_class_map(path: Path, shipped: dict[str, int]) -> None:
    """A user's map_clsloc.txt that gives any wnid another id than the shipped index."""
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    try:
        theirs = {r[0]: int(r[1]) for r in rows}
    except (IndexError, ValueError) as err:
        raise DatasetError(f"{path}: expected lines '<wnid> <id> <name>' ({err})") from err
    for wnid, rid in theirs.items():
        if shipped.get(wnid) != rid:
            expected = (f"the standard map gives {wnid} id {shipped[wnid]}" if wnid in shipped
                        else f"{wnid} is not an ImageNet-1K wnid")
            raise DatasetError(f"{path} gives {wnid} id {rid}, but {expected}; the release's "
                               f"labels follow the standard map_clsloc.txt: remove {path.name} "
                               "or use the devkit's own copy")
    missing = sorted(set(shipped) - set(theirs))
    if missing:
        raise DatasetError(f"{path} lacks {len(missing)} wnids ({missing[:3]}...); remove "
                           f"{path.name} or use the devkit's own copy")


def _sources_digest(files: list[Path], labels: np.ndarray) -> str:
    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.name}:{p.stat().st_size};".encode())
    h.update(np.ascontiguousarray(labels).tobytes())
    return h.hexdigest()


def build_release_cache(files: list[Path], directory: Path, *, order: np.ndarray,
                        class_names: tuple[str, ...], split: str,
                        progress: bool = False) -> cache_mod.ImageCache:
    """Convert the npz batches ``files`` once into an image cache at ``directory`` (resumed
    chunk by chunk if interrupted; a finished cache of the same files is reused)."""
    labels = np.concatenate([read_labels(p) for p in files])
    if labels.size == 0 or labels.min() < 1 or labels.max() > imagenet.NUM_CLASSES:
        raise DatasetError(f"labels of {files[0].parent} must be 1..{imagenet.NUM_CLASSES} "
                           "(1-based, as released)")
    labels = order[labels - 1]
    layout = cache_mod.CacheLayout(len(labels), RESOLUTION)
    n_chunks = -(-len(labels) // CHUNK_ROWS)
    meta = {"format_version": cache_mod.FORMAT_VERSION, "kind": "image_cache",
            "count": len(labels), "resolution": RESOLUTION, "resize": RULE,
            "resample": "as released (Chrabaszcz et al. 2017), uint8 NCHW",
            "chunk_size": CHUNK_ROWS, "sources_sha256": _sources_digest(files, labels),
            "source_base": str(files[0].parent), "dataset": NAME, "split": split,
            "class_names": list(class_names), "chunk_sha256": [None] * n_chunks,
            "complete": False}
    target = directory / cache_mod.META_FILE
    if target.is_file() and read_json(target).get("complete"):
        cache = cache_mod.ImageCache.open(directory)
        if cache.meta.get("sources_sha256") != meta["sources_sha256"]:
            raise DatasetError(f"{directory} holds a cache of other files; delete it or choose "
                               "another cache_dir")
        return cache
    directory.mkdir(parents=True, exist_ok=True)
    done = cache_mod._start_or_resume(directory, meta)
    cache_mod._check_disk(directory, layout)
    write_json(meta, target)
    np.save(directory / cache_mod.LABELS_FILE, labels)
    _write_chunks(files, directory, layout, done, progress)
    meta.update(chunk_sha256=done, complete=True)
    write_json(meta, target)
    (directory / cache_mod.CHUNKS_FILE).unlink(missing_ok=True)
    return cache_mod.ImageCache.open(directory)


def _chunks(files: list[Path]) -> Iterator[np.ndarray]:
    """(CHUNK_ROWS, ROW) uint8 blocks across the batch files (the last one shorter)."""
    pending: list[np.ndarray] = []
    have = 0
    for path in files:
        for block in iter_rows(path, CHUNK_ROWS):
            while len(block):
                take = block[:CHUNK_ROWS - have]
                pending.append(take)
                have += len(take)
                block = block[len(take):]
                if have == CHUNK_ROWS:
                    yield np.concatenate(pending)
                    pending, have = [], 0
    if pending:
        yield np.concatenate(pending)


def _write_chunks(files: list[Path], directory: Path, layout: cache_mod.CacheLayout,
                  done: list[str | None], progress: bool) -> None:
    path = directory / cache_mod.IMAGES_FILE
    with open(path, "r+b" if path.exists() else "w+b") as f, tqdm(
            total=layout.count, unit="img", desc="converting npz batches",
            disable=not progress) as bar:
        f.truncate(layout.total_bytes)  # sparse until written
        for k, rows in enumerate(_chunks(files)):
            bar.update(len(rows))
            if done[k] is not None:
                continue
            f.seek(k * CHUNK_ROWS * ROW)
            f.write(rows.tobytes())
            f.flush()
            os.fsync(f.fileno())  # on disk before it is recorded as done
            done[k] = cache_mod._sha256(rows.reshape(-1, 3, RESOLUTION, RESOLUTION))
            write_json({"chunk_sha256": done}, directory / cache_mod.CHUNKS_FILE)


def load_split(root: Path, split: str, *, cache_dir: str | Path | None = None,
               workers: int = 2, progress: bool = False) -> LoadedSplit:
    """One split of ImageNet-1K at 64 px as a `LoadedSplit` over its cache ([0,1] pixels).

    The release's npz batches under ``root`` (or ``root/imagenet64``) are used when present,
    else the ILSVRC-2012 JPEG tree, resized with ``squash``. "test" is the val split.
    """
    root = Path(root).expanduser()
    split = "val" if split == "test" else split
    folder = release_root(root)
    if folder is None:
        try:
            imagenet.find_root(root)
        except DatasetError:
            raise DatasetError(
                f"neither the downsampled ImageNet release (train_data_batch_*.npz, flat or in "
                f"Imagenet64_train_part*/) nor an ILSVRC-2012 train/ folder is under {root} or "
                f"{root / NAME}; point data_root at one of them") from None
        loaded = imagenet.load_split(root, split, name="imagenet", image_size=RESOLUTION,
                                     resize="squash", cache_dir=cache_dir, workers=workers,
                                     progress=progress)
        return replace(loaded, info=replace(loaded.info, name=NAME))
    files = find_batches(folder, split)
    if not files:
        raise DatasetError(f"{folder} has the train batches but no {split} batch "
                           "(val_data.npz); download Imagenet64_val too")
    order, names = class_order(folder)
    target = imagenet.cache_folder(folder, NAME, split, RESOLUTION, RULE, cache_dir)
    cache = build_release_cache(files, target, order=order, class_names=names, split=split,
                                progress=progress)
    return LoadedSplit(cache.images(), cache.labels, INFO.with_classes(names))
