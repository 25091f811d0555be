"""Datasets: one module per file format, a name registry, normalisation and ZCA whitening.

    create_dataset(name, root, split)  -> ImageSet (float32 (N, C, H, W), int64 labels)
    prepare(name, root, zca=...)       -> RealData (train + test in one image space)
    list_datasets(), dataset_info(name), normalize(x, info), denormalize(x, info)

Formats: digits (scikit-learn, embedded), mnist / fashion_mnist (IDX), cifar10 / cifar100
(pickle batches, restricted unpickler), svhn (.mat), tiny_imagenet (stock folder or zip),
imagefolder (root/<class>/<image>). `download=True` fetches the official files with checksums.

Example:
    >>> from datadistill.data import create_dataset
    >>> create_dataset("digits", split="test").images.shape
    torch.Size([360, 1, 8, 8])
"""

from datadistill.data.info import DatasetInfo, ImageSet, denormalize, normalize
from datadistill.data.prepare import (
    RealData,
    check_prepared,
    prepare,
    random_subset,
    renormalize,
)
from datadistill.data.registry import (
    UnknownDatasetError,
    create_dataset,
    dataset_info,
    list_datasets,
    split_sizes,
)
from datadistill.data.zca import ZCA

__all__ = [
    "ZCA",
    "DatasetInfo",
    "ImageSet",
    "RealData",
    "UnknownDatasetError",
    "create_dataset",
    "dataset_info",
    "denormalize",
    "list_datasets",
    "normalize",
    "prepare",
    "random_subset",
    "check_prepared",
    "renormalize",
    "split_sizes",
]
