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
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from datadistill.data.info import DatasetInfo, ImageSet
from datadistill.data.registry import create_dataset
from datadistill.data.zca import DEFAULT_EPS, ZCA

logger = logging.getLogger(__name__)


@dataclass
class RealData:
    """Both splits of a dataset, in the same image space, and the ZCA that made it (if any)."""

    train: ImageSet
    test: ImageSet
    info: DatasetInfo
    zca: ZCA | None


def prepare(
    name: str,
    root: str | Path | None = None,
    *,
    zca: bool = False,
    download: bool = False,
    device: str | torch.device = "cpu",
    zca_eps: float = DEFAULT_EPS,
    image_size: int | tuple[int, int] | None = None,
    progress: bool = False,
) -> RealData:
    """Load train and test, normalised (zca=False) or ZCA-whitened (zca=True), on `device`.

    The ZCA is fitted on `device` (float64 there), on the raw train pixels, then applied to
    both splits. `image_size` is passed on for imagefolder.

    Example:
        >>> prepare("digits").train.space
        'normalized'
    """
    kwargs = {"download": download, "normalize": not zca, "progress": progress}
    if image_size is not None:
        kwargs["image_size"] = image_size
    train = create_dataset(name, root, "train", **kwargs).to(device)
    # For Tiny ImageNet "test" means its labelled val split (the official test has no labels).
    test = create_dataset(name, root, "test", **kwargs).to(device)
    if not zca:
        return RealData(train, test, train.info, None)
    logger.info("fitting ZCA (eps=%g) on %d training images", zca_eps, len(train))
    whitening = ZCA.fit(train.images, eps=zca_eps)
    train = replace(train, images=whitening.apply(train.images), space="zca")
    test = replace(test, images=whitening.apply(test.images), space="zca")
    return RealData(train, test, train.info, whitening)


def check_prepared(data: RealData, dataset: str, zca: bool, section: str) -> None:
    """Raise ConfigError when ``data`` is not the dataset/ZCA space a config asks for.

    ``section`` names the config section in the message (e.g. "experts", "distill").
    """
    from datadistill.errors import ConfigError

    if data.info.name != dataset:
        raise ConfigError(f"{section}.dataset is {dataset!r} but the data is "
                          f"{data.info.name!r}; prepare the configured dataset.")
    if (data.zca is not None) != zca:
        raise ConfigError(f"{section}.zca={zca} but the data was prepared with "
                          f"zca={data.zca is not None}; call prepare(..., zca={zca}).")
