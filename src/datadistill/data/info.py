"""Dataset metadata (`DatasetInfo`), an in-memory labelled image set (`ImageSet`) and the
channelwise normalisation used by the whole library.

Example:
    >>> import torch
    >>> info = DatasetInfo("toy", 2, 1, (8, 8), (0.5,), (0.25,), ("a", "b"))
    >>> x = torch.full((1, 1, 8, 8), 0.75)
    >>> float(normalize(x, info)[0, 0, 0, 0])
    1.0
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from datadistill.errors import ConfigError, DatasetError

# Image spaces an ImageSet can live in: raw [0,1] pixels, (x - mean) / std, or ZCA-whitened.
SPACES = ("raw", "normalized", "zca")

# DSA strategies (DC/DSA `ParamDiffAug`): digit datasets drop the flip, since a mirrored digit
# is a different (or no) digit.
DSA_DEFAULT = "color_crop_cutout_flip_scale_rotate"
DSA_NO_FLIP = "color_crop_cutout_scale_rotate"

DIGIT_NAMES = tuple(str(d) for d in range(10))  # class names of digits, MNIST and SVHN


@dataclass(frozen=True)
class DatasetInfo:
    """Static description of a dataset: shape, classes and normalisation statistics.

    `mean` and `std` are per channel, in [0,1] pixel units.

    Example:
        >>> DatasetInfo("toy", 2, 1, (8, 8), (0.5,), (0.25,), ("a", "b")).num_classes
        2
    """

    name: str
    num_classes: int
    channels: int
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...]
    dsa_strategy: str = DSA_DEFAULT

    def __post_init__(self) -> None:
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ConfigError(
                f"dataset {self.name!r}: mean {self.mean} and std {self.std} must have one "
                f"value per channel ({self.channels}); fix the statistics"
            )
        if len(self.class_names) != self.num_classes:
            raise ConfigError(
                f"dataset {self.name!r}: {len(self.class_names)} class names for "
                f"{self.num_classes} classes; give one name per class"
            )
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"dataset {self.name!r}: std {self.std} must be positive")

    def shape_problem(self, images: torch.Tensor, of: str = "dataset") -> str | None:
        """None when ``images`` are (N, C, H, W) of this dataset, else what is wrong (``of``
        names the data the images were compared with).

        Example:
            >>> DatasetInfo("toy", 1, 1, (8, 8), (0.5,), (0.25,), ("a",)).shape_problem(
            ...     torch.zeros(2, 3, 8, 8))
            "images have shape (2, 3, 8, 8), expected (N, 1, 8, 8) for dataset 'toy'"
        """
        expect = (self.channels, *self.image_size)
        if images.dim() == 4 and tuple(images.shape[1:]) == expect:
            return None
        return (f"images have shape {tuple(images.shape)}, expected (N, {expect[0]}, "
                f"{expect[1]}, {expect[2]}) for {of} {self.name!r}")

    def with_classes(self, class_names: tuple[str, ...]) -> DatasetInfo:
        """Copy with other class names (and the matching class count)."""
        return replace(self, class_names=tuple(class_names), num_classes=len(class_names))


@dataclass
class ImageSet:
    """Labelled images held in memory.

    Attributes:
        images: (N, C, H, W) float32.
        labels: (N,) int64.
        info: the dataset the images come from.
        space: "raw" ([0,1] pixels), "normalized" ((x - mean) / std) or "zca".

    Example:
        >>> info = DatasetInfo("toy", 2, 1, (8, 8), (0.5,), (0.25,), ("a", "b"))
        >>> s = ImageSet(torch.zeros(3, 1, 8, 8), torch.tensor([0, 1, 1]), info, "raw")
        >>> len(s)
        3
    """

    images: torch.Tensor
    labels: torch.Tensor
    info: DatasetInfo
    space: str

    def __post_init__(self) -> None:
        if self.space not in SPACES:
            raise ConfigError(f"unknown image space {self.space!r}; use one of {SPACES}")
        if self.images.ndim != 4 or self.labels.ndim != 1:
            raise DatasetError(
                f"ImageSet needs images (N, C, H, W) and labels (N,), got "
                f"{tuple(self.images.shape)} and {tuple(self.labels.shape)}"
            )
        if self.images.shape[0] != self.labels.shape[0]:
            raise DatasetError(
                f"ImageSet has {self.images.shape[0]} images but {self.labels.shape[0]} labels"
            )

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: str | torch.device) -> ImageSet:
        """Copy with images and labels on `device`."""
        return replace(self, images=self.images.to(device), labels=self.labels.to(device))


@dataclass
class LoadedSplit:
    """What a format loader returns: pixels as stored, before conversion to float tensors.

    Attributes:
        images: (N, C, H, W) uint8 in 0..255, or float32 already in [0,1].
        labels: (N,) int64.
        info: the dataset's info, with class names as read from the files where they exist.
    """

    images: np.ndarray
    labels: np.ndarray
    info: DatasetInfo


def _channel_stats(x: torch.Tensor, info: DatasetInfo) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std shaped (C, 1, 1) to broadcast over (..., C, H, W)."""
    if x.ndim < 3 or x.shape[-3] != info.channels:
        raise DatasetError(
            f"expected images (..., {info.channels}, H, W) for dataset {info.name!r}, "
            f"got shape {tuple(x.shape)}"
        )
    dtype = x.dtype if x.is_floating_point() else torch.float32
    mean = torch.tensor(info.mean, dtype=dtype, device=x.device).view(-1, 1, 1)
    std = torch.tensor(info.std, dtype=dtype, device=x.device).view(-1, 1, 1)
    return mean, std


def normalize(x: torch.Tensor, info: DatasetInfo) -> torch.Tensor:
    """Map [0,1] pixels to (x - mean) / std, channelwise; x is (..., C, H, W).

    Example:
        >>> info = DatasetInfo("toy", 1, 1, (2, 2), (0.5,), (0.5,), ("a",))
        >>> normalize(torch.ones(1, 2, 2), info).tolist()
        [[[1.0, 1.0], [1.0, 1.0]]]
    """
    mean, std = _channel_stats(x, info)
    return (x - mean) / std


def denormalize(x: torch.Tensor, info: DatasetInfo) -> torch.Tensor:
    """Inverse of `normalize`: x * std + mean, channelwise; x is (..., C, H, W).

    Example:
        >>> info = DatasetInfo("toy", 1, 1, (2, 2), (0.5,), (0.25,), ("a",))
        >>> float(denormalize(normalize(torch.full((1, 2, 2), 0.75), info), info).max())
        0.75
    """
    mean, std = _channel_stats(x, info)
    return x * std + mean
