"""The dataset registry: `create_dataset(name, root, split)`, `list_datasets()`,
`dataset_info(name)`.

Each registered dataset maps to one format module that returns pixels as stored
(`LoadedSplit`); this module turns them into float32 tensors, [0,1] or normalised.

`root` defaults to the `DATADISTILL_DATA` environment variable, else `./data`.

Example:
    >>> ds = create_dataset("digits", split="test")
    >>> tuple(ds.images.shape), ds.space
    ((360, 1, 8, 8), 'normalized')
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

import datadistill.data.cifar as cifar
import datadistill.data.digits as digits
import datadistill.data.downsampled as downsampled
import datadistill.data.folder as folder
import datadistill.data.imagenet as imagenet
import datadistill.data.mnist as mnist
import datadistill.data.svhn as svhn
import datadistill.data.tiny as tiny
from datadistill.data.cache import CachedImages
from datadistill.data.info import DatasetInfo, ImageSet, LoadedSplit
from datadistill.errors import ConfigError, DatasetError

ROOT_ENV = "DATADISTILL_DATA"


class UnknownDatasetError(ConfigError, DatasetError):
    """A dataset name that is not registered (a ConfigError that is also a DatasetError)."""


@dataclass(frozen=True)
class DatasetSpec:
    """How to load one registered dataset.

    `info` is None when the metadata depends on the files (imagefolder).
    `loader(root, split, download=..., progress=..., **options)` returns a `LoadedSplit`.
    """

    info: DatasetInfo | None
    splits: tuple[str, ...]
    loader: Callable[..., LoadedSplit]
    options: frozenset[str] = frozenset()
    sizes: tuple[int, int] | None = None  # (train, test) images; None: the files decide


def _digits_loader(root: Path, split: str, *, download: bool, progress: bool) -> LoadedSplit:
    return digits.load_split(split)  # embedded: no root, nothing to download


def _folder_loader(
    root: Path,
    split: str,
    *,
    download: bool,
    progress: bool,
    image_size: int | tuple[int, int] | None = None,
) -> LoadedSplit:
    if download:
        raise ConfigError("imagefolder has nothing to download; drop download=True")
    return folder.load_split(root, split, image_size=image_size, progress=progress)


def _imagenet_loader(name: str, root: Path, split: str, *, download: bool, progress: bool,
                     **options) -> LoadedSplit:
    if download:
        raise ConfigError(f"{name} cannot be downloaded (ImageNet's licence); get ILSVRC-2012 "
                          "from image-net.org and pass its folder as root")
    return imagenet.load_split(root, split, name=name, progress=progress, **options)


_IMAGENET_OPTIONS = frozenset({"image_size", "resize", "cache_dir", "workers"})


def _imagenet64_loader(root: Path, split: str, *, download: bool, progress: bool,
                       **options) -> LoadedSplit:
    if download:
        raise ConfigError("imagenet64 cannot be downloaded (ImageNet's licence); get the "
                          "downsampled release or ILSVRC-2012 and pass its folder as root")
    return downsampled.load_split(root, split, progress=progress, **options)

_REGISTRY: dict[str, DatasetSpec] = {
    "digits": DatasetSpec(digits.INFO, ("train", "test"), _digits_loader, sizes=(1_437, 360)),
    "mnist": DatasetSpec(mnist.MNIST_INFO, ("train", "test"), partial(mnist.load_split, "mnist"),
                         sizes=(60_000, 10_000)),
    "fashion_mnist": DatasetSpec(
        mnist.FASHION_INFO, ("train", "test"), partial(mnist.load_split, "fashion_mnist"),
        sizes=(60_000, 10_000)),
    "cifar10": DatasetSpec(
        cifar.CIFAR10_INFO, ("train", "test"), partial(cifar.load_split, "cifar10"),
        sizes=(50_000, 10_000)),
    "cifar100": DatasetSpec(
        cifar.CIFAR100_INFO, ("train", "test"), partial(cifar.load_split, "cifar100"),
        sizes=(50_000, 10_000)),
    "svhn": DatasetSpec(svhn.INFO, ("train", "test"), svhn.load_split, sizes=(73_257, 26_032)),
    "tiny_imagenet": DatasetSpec(tiny.INFO, ("train", "val", "test"), tiny.load_split,
                                 sizes=(100_000, 10_000)),
    "imagefolder": DatasetSpec(
        None, ("train", "test", "val"), _folder_loader, frozenset({"image_size"})
    ),
    # ImageNet-1K (224 px by default) and MTT's subsets (128 px), read from a uint8 cache.
    **{
        name: DatasetSpec(imagenet.info_for(name, 224 if name == "imagenet" else 128),
                          ("train", "val", "test"), partial(_imagenet_loader, name),
                          _IMAGENET_OPTIONS)
        for name in ("imagenet", *imagenet.SUBSETS)
    },
    # ImageNet-1K at 64 px for trajectory matching (TESLA's setting): the downsampled release's
    # npz batches or the ILSVRC-2012 tree, both through the uint8 cache.
    "imagenet64": DatasetSpec(downsampled.INFO, ("train", "val", "test"), _imagenet64_loader,
                              frozenset({"cache_dir", "workers"})),
}

# Spellings people use for the same datasets (torchvision class names, hyphens).
_ALIASES = {
    "fashionmnist": "fashion_mnist",
    "fmnist": "fashion_mnist",
    "cifar-10": "cifar10",
    "cifar-100": "cifar100",
    "tinyimagenet": "tiny_imagenet",
    "tiny": "tiny_imagenet",
    "image_folder": "imagefolder",
    "imagenet1k": "imagenet",
    "imagenet_1k": "imagenet",
    "imagenet_64": "imagenet64",
    "imagenet1k_64": "imagenet64",
}


def list_datasets() -> list[str]:
    """Registered dataset names, sorted.

    Example:
        >>> "cifar10" in list_datasets()
        True
    """
    return sorted(_REGISTRY)


def _spec(name: str) -> tuple[str, DatasetSpec]:
    key = name.strip().lower().replace("-", "_")
    key = _ALIASES.get(key, _ALIASES.get(name.strip().lower(), key))
    if key not in _REGISTRY:
        raise UnknownDatasetError(
            f"unknown dataset {name!r}; available: {', '.join(list_datasets())}"
        )
    return key, _REGISTRY[key]


def split_sizes(name: str) -> tuple[int, int] | None:
    """(train, test) image counts of a registered dataset; None where its files decide
    (imagefolder, ImageNet and its subsets). An unregistered name is an UnknownDatasetError.

    Example:
        >>> split_sizes("cifar10")
        (50000, 10000)
    """
    return _spec(name)[1].sizes


def resolve_root(root: str | Path | None) -> Path:
    """`root`, else $DATADISTILL_DATA, else ./data; with ~ expanded."""
    if root is None:
        root = os.environ.get(ROOT_ENV) or "data"
    return Path(root).expanduser()


def dataset_info(name: str, *, root: str | Path | None = None) -> DatasetInfo:
    """Metadata of a registered dataset, without reading files.

    Class names are generic for tiny_imagenet until its files are read. imagefolder has no
    fixed metadata: give `root` and its train split is read to find classes, size and
    statistics.

    Example:
        >>> dataset_info("cifar10").image_size
        (32, 32)
    """
    key, spec = _spec(name)
    if spec.info is not None:
        return spec.info
    if root is None:
        raise ConfigError(
            f"{key}'s classes, image size and statistics depend on the folder; call "
            f"dataset_info({key!r}, root=...) or use create_dataset(...).info"
        )
    return create_dataset(key, root, "train", normalize=False).info


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    """(N, C, H, W) uint8 or [0,1] float -> float32 tensor in [0,1] (always a copy)."""
    if images.dtype == np.uint8:
        return torch.from_numpy(images.astype(np.float32)).div_(255.0)
    return torch.from_numpy(np.array(images, dtype=np.float32))


def create_dataset(
    name: str,
    root: str | Path | None = None,
    split: str = "train",
    *,
    download: bool = False,
    normalize: bool = True,
    image_size: int | tuple[int, int] | None = None,
    progress: bool = False,
    **options,
) -> ImageSet:
    """Load one split of a registered dataset as float32 tensors.

    Args:
        name: a name from `list_datasets()`.
        root: data folder (default: $DATADISTILL_DATA, else ./data); unused by digits.
        split: "train" or "test" ("val" for tiny_imagenet and imagefolder).
        download: fetch missing files from the official URLs (checksums verified).
        normalize: return (x - mean) / std ("normalized"); else [0,1] pixels ("raw").
        image_size: imagefolder: resize every image to this (H, W) or square size;
            imagenet and its subsets: the cached side S (default 224 / 128).
        progress: show a progress bar while downloading or decoding.
        options: imagenet and its subsets only: ``resize`` ("squash" | "shorter_center"),
            ``cache_dir``, ``workers`` (see :mod:`datadistill.data.imagenet`). Their images
            are a :class:`~datadistill.data.cache.CachedImages` reader, not an in-memory tensor.

    Example:
        >>> ds = create_dataset("digits", split="train", normalize=False)
        >>> ds.images.shape, ds.labels.dtype, ds.space
        (torch.Size([1437, 1, 8, 8]), torch.int64, 'raw')
    """
    key, spec = _spec(name)
    if split not in spec.splits:
        raise ConfigError(f"{key} has no split {split!r}; use one of {spec.splits}")
    options = {**({"image_size": image_size} if image_size is not None else {}), **options}
    unsupported = set(options) - spec.options
    if unsupported:
        raise ConfigError(f"{key} does not take {sorted(unsupported)}; it takes "
                          f"{sorted(spec.options) or 'no options'}")
    loaded = spec.loader(resolve_root(root), split, download=download, progress=progress, **options)
    if isinstance(loaded.images, CachedImages):  # read per batch, normalised on the fly
        return _cached_set(loaded, normalize)
    images = _to_tensor(loaded.images)  # (N, C, H, W) float32 in [0,1]
    labels = torch.from_numpy(np.array(loaded.labels, dtype=np.int64))
    if normalize:
        return ImageSet(_normalize_(images, loaded.info), labels, loaded.info, "normalized")
    return ImageSet(images, labels, loaded.info, "raw")


def _cached_set(loaded: LoadedSplit, normalize: bool) -> ImageSet:
    info, labels = loaded.info, torch.from_numpy(np.asarray(loaded.labels, dtype=np.int64))
    mean, std = (info.mean, info.std) if normalize else (None, None)
    reader = CachedImages(loaded.images.path, len(labels), info.image_size[0], mean, std)
    return ImageSet(reader, labels, info, "normalized" if normalize else "raw")


def _normalize_(images: torch.Tensor, info: DatasetInfo) -> torch.Tensor:
    """In-place (x - mean) / std: the float copy is ours, and Tiny ImageNet is 4.9 GB."""
    mean = torch.tensor(info.mean, dtype=images.dtype).view(-1, 1, 1)
    std = torch.tensor(info.std, dtype=images.dtype).view(-1, 1, 1)
    return images.sub_(mean).div_(std)
