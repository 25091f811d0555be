"""`prepare`: the train and test splits of a dataset in the space distillation works in.

Without ZCA both splits are normalised with the dataset's mean/std. With ZCA (MTT/FTD/DATM/
PAD `--zca`) both are raw [0,1] pixels whitened by one `ZCA` fitted on the train split only.

Example:
    >>> real = prepare("digits", zca=True)
    >>> real.train.space, real.test.space, tuple(real.zca.transform.shape)
    ('zca', 'zca', (64, 64))
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from datadistill.data.info import DatasetInfo, ImageSet, denormalize, normalize
from datadistill.data.registry import create_dataset
from datadistill.data.zca import DEFAULT_EPS, ZCA
from datadistill.errors import ConfigError

logger = logging.getLogger(__name__)


@dataclass
class RealData:
    """Both splits of a dataset, in the same image space, and the ZCA that made it (if any)."""

    train: ImageSet
    test: ImageSet
    info: DatasetInfo
    zca: ZCA | None
    train_per_class: int | None = None  # set when train is a class-balanced subset


def balanced_indices(labels: torch.Tensor, num_classes: int, per_class: int,
                     generator: torch.Generator | None,
                     too_few: Callable[[int, int], str]) -> torch.Tensor:
    """Class-major indices: the first ``per_class`` entries of a permutation of each class's
    indices, drawn on the CPU from ``generator``. ``too_few(c, n_c)`` words the ConfigError
    raised when class c is smaller.

    Example:
        >>> balanced_indices(torch.tensor([1, 0, 1, 0]), 2, 1, torch.Generator().manual_seed(0),
        ...                  lambda c, n: "too few").shape
        torch.Size([2])
    """
    labels = labels.cpu()
    keep = []
    for c in range(num_classes):
        idx = torch.nonzero(labels == c).flatten()  # (n_c,) indices of class c
        if idx.numel() < per_class:
            raise ConfigError(too_few(c, idx.numel()))
        keep.append(idx[torch.randperm(idx.numel(), generator=generator)[:per_class]])
    return torch.cat(keep)


def subset_per_class(images: ImageSet, per_class: int, seed: int = 0) -> ImageSet:
    """A class-balanced random subset: ``per_class`` images of every class, seeded.

    Each class keeps the first ``per_class`` entries of a seeded permutation of its indices;
    the subset lists classes in order. Raises ConfigError when a class is smaller.

    Example:
        >>> small = subset_per_class(create_dataset("digits", None, "train"), 5)
        >>> len(small), small.labels[:6].tolist()
        (50, [0, 0, 0, 0, 0, 1])
    """
    if per_class < 1:
        raise ConfigError(f"train_per_class must be >= 1, got {per_class}")
    sel = balanced_indices(
        images.labels, images.info.num_classes, per_class,
        torch.Generator().manual_seed(seed),
        lambda c, n: (f"train_per_class={per_class} but class {c} of {images.info.name} has "
                      f"only {n} training images; use train_per_class <= {n} or null for all "
                      "data."),
    ).to(images.labels.device)
    return replace(images, images=images.images[sel], labels=images.labels[sel])


def random_subset(
    train: ImageSet, ipc: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """`ipc` random images of every class, class-major: images (K*ipc, C, H, W), labels
    (K*ipc,) = [0]*ipc + [1]*ipc + ... (the random-subset baseline and INFER's fair one).

    Example:
        >>> x, y = random_subset(real.train, 10, torch.Generator().manual_seed(0))  # doctest: +SKIP
    """
    if ipc < 1:
        raise ConfigError(f"ipc must be >= 1, got {ipc}")
    # Permutations drawn on CPU so the subset does not depend on where the data lives.
    order = balanced_indices(
        train.labels, train.info.num_classes, ipc, generator,
        lambda c, n: (f"class {c} ({train.info.class_names[c]!r}) has only {n} training "
                      f"images, fewer than ipc={ipc}; lower ipc"),
    ).to(train.images.device)
    return train.images[order].clone(), train.labels[order].clone()


def prepare(
    name: str,
    root: str | Path | None = None,
    *,
    zca: bool = False,
    zca_eps: float = DEFAULT_EPS,
    device: str | torch.device = "cpu",
    train_per_class: int | None = None,
    **load,
) -> RealData:
    """Load train and test, normalised (zca=False) or ZCA-whitened (zca=True), on `device`.

    The ZCA is fitted on `device` (float64 there), on the raw train pixels, then applied to
    both splits. `train_per_class` keeps a seeded class-balanced subset of the train split
    (:func:`subset_per_class`) after the ZCA is fitted on the whole split, for quick or
    CPU-scale runs; None keeps all of it. `load` are :func:`create_dataset`'s keyword
    arguments for both splits: ``download``, ``progress`` (both default False),
    ``image_size`` (imagefolder and the cached ImageNet sets) and imagenet's ``resize``,
    ``cache_dir``, ``workers``; cached datasets stay on disk and their batches move to
    `device` as they are read.

    Example:
        >>> prepare("digits").train.space
        'normalized'
    """
    kwargs = {"normalize": not zca, **load}
    train = create_dataset(name, root, "train", **kwargs).to(device)
    # For Tiny ImageNet "test" means its labelled val split (the official test has no labels).
    test = create_dataset(name, root, "test", **kwargs).to(device)
    whitening = None
    if zca and not isinstance(train.images, torch.Tensor):
        raise ConfigError(f"{name} is read from a disk cache and cannot be ZCA-whitened (the "
                          "official ImageNet-subset settings use no ZCA); set zca: false")
    if zca:
        logger.info("fitting ZCA (eps=%g) on %d training images", zca_eps, len(train))
        whitening = ZCA.fit(train.images, eps=zca_eps)
        train = replace(train, images=whitening.apply(train.images), space="zca")
        test = replace(test, images=whitening.apply(test.images), space="zca")
    if train_per_class is not None:
        train = subset_per_class(train, train_per_class)
    return RealData(train, test, train.info, whitening, train_per_class)


def renormalize(data: RealData, mean: tuple[float, ...], std: tuple[float, ...]) -> RealData:
    """``data`` (normalised space) re-expressed with another ``mean``/``std`` per channel.

    For recipes whose official code normalises a dataset with its own statistics (INFER
    lists Tiny ImageNet's (0.4802, 0.4481, 0.3975) / (0.2302, 0.2265, 0.2262), where MTT's
    family uses ImageNet's). The pixels are unchanged: x_new = (x * std + mean - mean') / std'.

    Example:
        >>> real = renormalize(prepare("digits"), (0.5,), (0.5,))
        >>> real.info.mean, real.train.info.std
        ((0.5,), (0.5,))
    """
    if data.train.space != "normalized":
        raise ConfigError(f"renormalize needs normalised images, got {data.train.space!r} "
                          "(ZCA space has no per-channel statistics); set zca=false.")
    info = replace(data.info, mean=tuple(float(m) for m in mean), std=tuple(float(s) for s in std))
    return replace(data, train=_renormalized(data.train, info), test=_renormalized(data.test, info),
                   info=info)


def _renormalized(images: ImageSet, info: DatasetInfo) -> ImageSet:
    raw = denormalize(images.images, images.info)  # (N, C, H, W) in [0, 1]
    return replace(images, images=normalize(raw, info), info=info)


def check_prepared(data: RealData, dataset: str, zca: bool, section: str,
                   train_per_class: int | None = None) -> None:
    """Raise ConfigError when ``data`` is not the dataset/ZCA space/subset a config asks for.

    ``section`` names the config section in the message (e.g. "experts", "distill").
    """

    if data.info.name != dataset:
        raise ConfigError(f"{section}.dataset is {dataset!r} but the data is "
                          f"{data.info.name!r}; prepare the configured dataset.")
    if (data.zca is not None) != zca:
        raise ConfigError(f"{section}.zca={zca} but the data was prepared with "
                          f"zca={data.zca is not None}; call prepare(..., zca={zca}).")
    if data.train_per_class != train_per_class:
        raise ConfigError(f"{section}.train_per_class={train_per_class} but the data was "
                          f"prepared with train_per_class={data.train_per_class}; call "
                          f"prepare(..., train_per_class={train_per_class}).")
