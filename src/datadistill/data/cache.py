"""A decoded-image cache on disk: uint8 pixels (N, 3, S, S) in one raw file, read on demand.

Large JPEG trees (ImageNet-1K: 1.28 M files) are decoded once, in parallel, into
`<cache>/images.u8` (row i = image i, NCHW, C order) beside `labels.npy` and `meta.json`
(format version, resolution, resize rule, the source list's checksum, one SHA-256 per chunk).

- **Resumable**: chunks of `chunk_size` images are written, flushed to disk, and only then
  recorded in `chunks.json`; an interrupted build continues with the first unrecorded chunk.
- **Checksummed**: `ImageCache.verify()` re-hashes every chunk against `meta.json`; the source
  list (relative paths, file sizes, labels) is hashed too, so a cache is never reused for a
  tree that changed.
- **Disk check**: before allocating, the bytes still to write are compared with the free
  space, and a shortfall is a `DatasetError` naming both numbers.

Resize rules (bilinear, Pillow's antialiased filter, on the RGB uint8 image):
    "squash"          resize to S x S, aspect ratio not kept: MTT's and INFER's
                      ``Resize((S, S))`` of the ImageNet subsets / ImageNet-1K.
    "shorter_center"  shorter side to S (longer side rounded down), then the centre S x S crop
                      (torchvision's ``Resize(S)`` + ``CenterCrop(S)``).
    "eval_crop"       shorter side to round(S * 256 / 224), then the centre S x S crop: the
                      standard ImageNet evaluation ``Resize(256)`` + ``CenterCrop(224)`` at S.

`CachedImages` reads rows with `os.preadv` rather than through a memory map, so the process
holds only the batch it asked for (a mapped file's pages count in the resident set).

Example:
    >>> cache = build_cache(paths, labels, "cache/train", resolution=128)   # doctest: +SKIP
    >>> x = cache.images(mean=(0.5,) * 3, std=(0.5,) * 3)[torch.arange(4)]  # doctest: +SKIP
    >>> x.shape                                                             # doctest: +SKIP
    torch.Size([4, 3, 128, 128])
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from datadistill.errors import DatasetError
from datadistill.io import read_json, write_json
from datadistill.runtime.progress import progress_bar

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
RESIZE_RULES = ("squash", "shorter_center", "eval_crop")
IMAGES_FILE, LABELS_FILE, META_FILE, CHUNKS_FILE = "images.u8", "labels.npy", "meta.json", \
    "chunks.json"


def decode_resized(path: str | Path, resolution: int, rule: str) -> np.ndarray:
    """One image file as (3, S, S) uint8 RGB, resized by `rule` (see the module docstring).

    Example:
        >>> decode_resized("n01440764/a.JPEG", 128, "squash").shape      # doctest: +SKIP
        (3, 128, 128)
    """
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            if rule == "squash":
                img = img.resize((resolution, resolution), Image.Resampling.BILINEAR)
            elif rule == "shorter_center":
                img = _shorter_side_centre_crop(img, resolution, resolution)
            else:
                img = _shorter_side_centre_crop(img, round(resolution * 256 / 224), resolution)
            array = np.asarray(img, dtype=np.uint8)  # (S, S, 3)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        raise DatasetError(f"{path} cannot be decoded as an image ({err}); the file is "
                           "truncated or corrupt: replace or delete it") from err
    return np.ascontiguousarray(array.transpose(2, 0, 1))


def _shorter_side_centre_crop(img: Image.Image, side: int, size: int) -> Image.Image:
    """torchvision's Resize(side) then CenterCrop(size): same arithmetic for the crop box."""
    w, h = img.size
    if w <= h:
        new_w, new_h = side, int(side * h / w)
    else:
        new_w, new_h = int(side * w / h), side
    img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def _decode_chunk(paths: Sequence[str], resolution: int, rule: str) -> np.ndarray:
    """(n, 3, S, S) uint8 for one chunk of files (runs in a worker process)."""
    out = np.empty((len(paths), 3, resolution, resolution), dtype=np.uint8)
    for i, path in enumerate(paths):
        out[i] = decode_resized(path, resolution, rule)
    return out


def _die_with(parent: int) -> None:
    """Worker initializer: end this decoding process when `parent` ends, however it ends.

    A killed parent (``kill -9``) runs no clean-up, and the pool's workers would wait for
    work forever: on Linux the kernel sends SIGKILL at the parent's death (PR_SET_PDEATHSIG);
    everywhere a daemon thread checks once a second that the parent is still the parent.
    """
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):  # no libc prctl: the thread below still watches
            pass
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def sources_digest(paths: Sequence[Path], labels: np.ndarray, base: Path) -> str:
    """SHA-256 of the (relative path, size, label) list: which tree a cache was built from."""
    h = hashlib.sha256()
    prefix = str(base) + os.sep
    for path, label in zip(paths, labels.tolist(), strict=True):
        text = str(path)  # a prefix cut, not relpath: 1.28 M paths on every start
        rel = text[len(prefix):] if text.startswith(prefix) else os.path.relpath(text, base)
        h.update(f"{rel}\t{os.path.getsize(text)}\t{label}\n".encode())
    return h.hexdigest()


@dataclass(frozen=True)
class CacheLayout:
    """Shape of a cache: `count` images of 3 x resolution x resolution uint8."""

    count: int
    resolution: int

    @property
    def row_bytes(self) -> int:
        return 3 * self.resolution * self.resolution

    @property
    def total_bytes(self) -> int:
        return self.count * self.row_bytes


class CachedImages:
    """(N, 3, S, S) float32 images read from a cache file on demand; a tensor stand-in.

    Supports what the training and evaluation loops use: ``len``, ``shape``, ``ndim``,
    ``device``, ``dtype``, ``to(device)`` (a no-op: the rows stay on disk, batches move) and
    indexing by int, slice, or an index tensor/array of any shape (the result has that shape
    followed by (3, S, S), as tensor indexing does), which returns a float32 tensor in
    [0,1] (``mean``/``std`` None) or normalised, ``(x / 255 - mean) / std``.

    Example:
        >>> x = CachedImages("c/images.u8", 10, 64, (0.5,) * 3, (0.5,) * 3)  # doctest: +SKIP
        >>> x[torch.tensor([3, 1])].shape                                   # doctest: +SKIP
        torch.Size([2, 3, 64, 64])
    """

    ndim = 4
    dtype = torch.float32
    device = torch.device("cpu")

    def __init__(self, path: str | Path, count: int, resolution: int,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
        self.path = Path(path)
        self.layout = CacheLayout(count, resolution)
        self.mean, self.std = (None, None) if mean is None else (tuple(mean), tuple(std))
        self._fd: int | None = None
        self._pid = -1

    @property
    def shape(self) -> torch.Size:
        r = self.layout.resolution
        return torch.Size((self.layout.count, 3, r, r))

    def __len__(self) -> int:
        return self.layout.count

    def to(self, device: str | torch.device) -> CachedImages:
        """Self: the pixels stay in the cache file; callers move each batch to `device`."""
        return self

    def content_digest(self) -> str:
        """SHA-256 naming these pixels as read: the cache's chunk checksums, shape and
        normalisation (so a run fingerprint never reads the whole file)."""
        meta = read_json(self.path.parent / META_FILE)
        h = hashlib.sha256(json.dumps([list(self.shape), self.mean, self.std,
                                       meta.get("chunk_sha256")]).encode())
        return h.hexdigest()

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fd": None, "_pid": -1}  # a descriptor is per process

    def __getitem__(self, index) -> torch.Tensor:
        idx = self._indices(index)  # any shape, e.g. (K, C) for class groups
        rows = self.read_uint8(idx.reshape(-1))  # (B, 3, S, S) uint8
        x = torch.from_numpy(rows).float().div_(255.0)
        if self.mean is not None:
            mean = torch.tensor(self.mean).view(1, 3, 1, 1)
            x = x.sub_(mean).div_(torch.tensor(self.std).view(1, 3, 1, 1))
        x = x.view(*idx.shape, *x.shape[1:])
        return x[0] if isinstance(index, int | np.integer) else x

    def _indices(self, index) -> np.ndarray:
        n = self.layout.count
        if isinstance(index, slice):
            return np.arange(n)[index]
        if isinstance(index, int | np.integer):
            if not -n <= index < n:
                raise IndexError(f"index {index} out of range for {n} images")
            return np.array([index % n])
        if isinstance(index, torch.Tensor):
            index = index.detach().cpu().numpy()
        idx = np.asarray(index)
        if idx.dtype == bool:
            return np.flatnonzero(idx)
        idx = idx.astype(np.int64)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"index out of range for {n} images")
        return idx % n if idx.size else idx

    def read_uint8(self, indices: np.ndarray) -> np.ndarray:
        """Rows `indices` as (B, 3, S, S) uint8, one positioned read per run of neighbours."""
        r = self.layout.resolution
        out = np.empty((len(indices), 3, r, r), dtype=np.uint8)
        fd, row = self._descriptor(), self.layout.row_bytes
        flat = out.reshape(len(indices), row)
        start = 0
        while start < len(indices):
            stop = start + 1  # extend the run while the file rows are consecutive
            while stop < len(indices) and indices[stop] == indices[stop - 1] + 1:
                stop += 1
            view = memoryview(flat[start:stop]).cast("B")
            got = os.preadv(fd, [view], int(indices[start]) * row)
            if got != view.nbytes:
                raise DatasetError(f"{self.path} is shorter than its metadata says; "
                                   "delete the cache folder and rebuild it")
            start = stop
        return out

    def _descriptor(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        return self._fd

    def __del__(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)


@dataclass
class ImageCache:
    """A complete cache folder: its metadata and labels; `images()` gives the pixel reader.

    Example (doctest: +SKIP):
        >>> cache = ImageCache.open("imagenet/.datadistill-cache/imagenette_train_128px_squash")
        >>> cache.meta["resize"], len(cache)                        # doctest: +SKIP
        ('squash', 9469)
    """

    directory: Path
    meta: dict
    labels: np.ndarray  # (N,) int64

    @classmethod
    def open(cls, directory: str | Path) -> ImageCache:
        """Open a finished cache; a missing, unfinished or truncated one is a DatasetError."""
        directory = Path(directory)
        meta = read_json(directory / META_FILE)
        if meta.get("format_version") != FORMAT_VERSION or meta.get("kind") != "image_cache":
            raise DatasetError(f"{directory} is not an image cache of format {FORMAT_VERSION}; "
                               "delete it and rebuild")
        if not meta.get("complete"):
            raise DatasetError(f"{directory} is an unfinished cache; build it again to resume")
        layout = CacheLayout(meta["count"], meta["resolution"])
        size = (directory / IMAGES_FILE).stat().st_size
        if size != layout.total_bytes:
            raise DatasetError(f"{directory / IMAGES_FILE} has {size} bytes, expected "
                               f"{layout.total_bytes}; delete the cache folder and rebuild it")
        labels = np.load(directory / LABELS_FILE, allow_pickle=False)
        return cls(directory, meta, labels.astype(np.int64))

    def __len__(self) -> int:
        return int(self.meta["count"])

    def images(self, mean: Sequence[float] | None = None,
               std: Sequence[float] | None = None) -> CachedImages:
        """The pixels as a `CachedImages` reader ([0,1], or normalised with mean/std)."""
        return CachedImages(self.directory / IMAGES_FILE, len(self), self.meta["resolution"],
                            mean, std)

    def verify(self, progress: bool = False) -> None:
        """Re-hash every chunk; a mismatch is a DatasetError naming the first bad chunk."""
        reader = self.images()
        chunk, digests = self.meta["chunk_size"], self.meta["chunk_sha256"]
        for k in progress_bar(range(len(digests)), desc="verifying cache", enabled=progress,
                              stage=True):
            rows = np.arange(k * chunk, min(len(self), (k + 1) * chunk))
            if _sha256(reader.read_uint8(rows)) != digests[k]:
                raise DatasetError(f"{self.directory}: chunk {k} (images {rows[0]}..{rows[-1]}) "
                                   "does not match its checksum; delete the folder and rebuild")


def _sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _check_disk(directory: Path, layout: CacheLayout) -> None:
    """Raise when the bytes still to be written exceed the free space of `directory`."""
    target = directory / IMAGES_FILE
    written = target.stat().st_blocks * 512 if target.exists() else 0  # sparse file: real use
    need = max(0, layout.total_bytes - written)
    free = shutil.disk_usage(directory).free
    if need > free:
        raise DatasetError(
            f"the image cache needs {need / 2**30:.2f} GiB more in {directory} "
            f"({layout.count} images of 3x{layout.resolution}x{layout.resolution} uint8) but "
            f"only {free / 2**30:.2f} GiB is free; free space, pass cache_dir= on a larger "
            "disk, or choose a lower resolution")


def _start_or_resume(directory: Path, meta: dict) -> list[str | None]:
    """The chunk digests already recorded (None = to do); a foreign cache is an error."""
    n_chunks = len(meta["chunk_sha256"])
    if not (directory / META_FILE).is_file():
        return [None] * n_chunks
    old = read_json(directory / META_FILE)
    keys = ("format_version", "count", "resolution", "resize", "chunk_size", "sources_sha256")
    diff = [k for k in keys if old.get(k) != meta[k]]
    if diff:
        raise DatasetError(f"{directory} holds a cache of other images or settings "
                           f"({', '.join(diff)} differ); delete it or choose another cache_dir")
    if not (directory / CHUNKS_FILE).is_file():
        return [None] * n_chunks
    done = read_json(directory / CHUNKS_FILE)["chunk_sha256"]
    return done if len(done) == n_chunks else [None] * n_chunks


@dataclass(frozen=True)
class BuildOptions:
    """How :func:`build_cache` decodes: ``chunk_size`` images per chunk (the unit of
    resumption and of checksumming), ``workers`` decoding processes (1: decode in this
    process), ``progress``: a progress bar with the time estimate."""

    chunk_size: int = 256
    workers: int = 2
    progress: bool = True


def build_cache(paths: Sequence[Path], labels: np.ndarray, directory: str | Path, *,
                resolution: int, resize: str = "squash", base: Path | None = None,
                extra_meta: dict | None = None,
                options: BuildOptions | None = None) -> ImageCache:
    """Decode `paths` once into a cache folder (resuming an interrupted build), then open it.

    Args:
        paths: the image files, in dataset order; `labels` (N,) their class indices.
        directory: the cache folder (created).
        resolution: side S of the square cached images; `resize`: a rule of RESIZE_RULES.
        base: folder the recorded source paths are relative to (default: their common parent).
        extra_meta: written into meta.json too (e.g. class names, dataset name).
        options: chunk size, decoding processes, progress bar (:class:`BuildOptions`;
            default: chunks of 256, 2 processes, a bar).

    Example:
        >>> build_cache(paths, labels, "cache/train", resolution=64,
        ...             options=BuildOptions(workers=2))                   # doctest: +SKIP
    """
    how = options or BuildOptions()
    if resize not in RESIZE_RULES:
        raise DatasetError(f"unknown resize rule {resize!r}; use one of {RESIZE_RULES}")
    directory = Path(directory)
    if (directory / META_FILE).is_file() and read_json(directory / META_FILE).get("complete"):
        cache = ImageCache.open(directory)
        _check_same_sources(cache, paths, labels, base, resolution, resize)
        return cache
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DatasetError(f"cannot create the image cache folder {directory} ({err}); pass "
                           "cache_dir=<a writable folder> or set DATADISTILL_CACHE") from err
    base = Path(base) if base is not None else Path(os.path.commonpath([str(p) for p in paths]))
    layout = CacheLayout(len(paths), resolution)
    n_chunks = -(-len(paths) // how.chunk_size)
    meta = {"format_version": FORMAT_VERSION, "kind": "image_cache", "count": len(paths),
            "resolution": resolution, "resize": resize,
            "resample": "bilinear (Pillow, antialiased), RGB, uint8 NCHW",
            "chunk_size": how.chunk_size, "sources_sha256": sources_digest(paths, labels, base),
            "source_base": str(base), **(extra_meta or {}),
            "chunk_sha256": [None] * n_chunks, "complete": False}
    done = _start_or_resume(directory, meta)
    _check_disk(directory, layout)
    write_json(meta, directory / META_FILE)
    np.save(directory / LABELS_FILE, np.asarray(labels, dtype=np.int64))
    _fill(directory, [str(p) for p in paths], layout, meta, done, how.workers, how.progress)
    meta.update(chunk_sha256=done, complete=True)
    write_json(meta, directory / META_FILE)
    (directory / CHUNKS_FILE).unlink(missing_ok=True)
    return ImageCache.open(directory)


def _check_same_sources(cache: ImageCache, paths, labels, base, resolution, resize) -> None:
    base = Path(base) if base is not None else Path(cache.meta["source_base"])
    want = {"resolution": resolution, "resize": resize,
            "sources_sha256": sources_digest(paths, labels, base)}
    diff = [k for k, v in want.items() if cache.meta.get(k) != v]
    if diff:
        raise DatasetError(f"{cache.directory} holds a cache of other images or settings "
                           f"({', '.join(diff)} differ); delete it or choose another cache_dir")


def _fill(directory: Path, paths: list[str], layout: CacheLayout, meta: dict,
          done: list[str | None], workers: int, progress: bool) -> None:
    """Decode the chunks not yet in `done`, write each at its offset, record its digest."""
    chunk, res, rule = meta["chunk_size"], layout.resolution, meta["resize"]
    todo = [k for k, d in enumerate(done) if d is None]
    skipped = sum(min(chunk, layout.count - k * chunk) for k, d in enumerate(done) if d)
    if skipped:
        logger.info("image cache %s: resuming, %d of %d images already decoded",
                    directory, skipped, layout.count)
    mode = "r+b" if (directory / IMAGES_FILE).exists() else "w+b"
    with open(directory / IMAGES_FILE, mode) as f, progress_bar(
            total=layout.count, initial=skipped, unit="img", desc="decoding into cache",
            enabled=progress, stage=True) as bar:
        f.truncate(layout.total_bytes)  # sparse until written
        for k, pixels in _decoded_chunks(todo, paths, chunk, res, rule, workers):
            f.seek(k * chunk * layout.row_bytes)
            f.write(pixels.tobytes())
            f.flush()
            os.fsync(f.fileno())  # on disk before it is recorded as done
            done[k] = _sha256(pixels)
            write_json({"chunk_sha256": done}, directory / CHUNKS_FILE)
            bar.update(len(pixels))


def _decoded_chunks(todo: list[int], paths: list[str], chunk: int, res: int, rule: str,
                    workers: int):
    """Yield (chunk index, (n, 3, S, S) uint8) as chunks finish; at most 2 per worker queued."""
    def files(k: int) -> list[str]:
        return paths[k * chunk:(k + 1) * chunk]

    if workers <= 1:
        for k in todo:
            yield k, _decode_chunk(files(k), res, rule)
        return
    # fork (as torch's DataLoader workers): the children run only Pillow and numpy, and a
    # spawned child would spend seconds importing torch again; spawn where fork is missing.
    method = "fork" if "fork" in get_all_start_methods() else "spawn"
    with ProcessPoolExecutor(workers, mp_context=get_context(method), initializer=_die_with,
                             initargs=(os.getpid(),)) as pool:
        queue = list(reversed(todo))
        running: dict = {}
        while queue or running:
            while queue and len(running) < 2 * workers:
                k = queue.pop()
                running[pool.submit(_decode_chunk, files(k), res, rule)] = k
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                yield running.pop(future), future.result()
