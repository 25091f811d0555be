"""The ECCV-2024 Dataset Distillation Challenge submission file: one tensor of images in
class-major order (IPC images of class 0, then class 1, ...), normalised pixels, the labels
implied by the order (the strict scorer is :mod:`datadistill.evaluation.challenge`).

Example:
    >>> export_challenge(ds, "submission/cifar100.pt")                 # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import torch

from datadistill.artifacts.distilled import DistilledSet, class_major, save_tensor_file
from datadistill.data import normalize
from datadistill.errors import CompatibilityError


def export_challenge(ds: DistilledSet, path: str | Path, *, drop_soft_labels: bool = False) -> Path:
    """Write the ECCV-2024 challenge file: a float tensor (N, C, H, W) in class-major order,
    normalised with the dataset statistics. The evaluator implies labels from the order
    ([0]*ipc + [1]*ipc + ...), so every class needs exactly ipc images.

    Example:
        >>> export_challenge(ds, "submission/cifar100.pt")                 # doctest: +SKIP
    """
    if ds.space == "zca":
        raise CompatibilityError(
            "export_challenge: the set lives in ZCA space but the "
            "challenge evaluates normalised pixels; distil without ZCA"
        )
    if ds.soft_labels and not drop_soft_labels:
        raise CompatibilityError(
            "export_challenge: the set has soft labels, which the "
            "challenge ignores; pass drop_soft_labels=True to export it "
            "with argmax classes"
        )
    images, labels = class_major(ds)
    counts = torch.bincount(labels, minlength=ds.info.num_classes)
    if not bool((counts == ds.ipc).all()):
        bad = int(torch.nonzero(counts != ds.ipc)[0])
        raise CompatibilityError(
            f"export_challenge: class {bad} has {int(counts[bad])} "
            f"images, the challenge needs exactly ipc={ds.ipc} per class"
        )
    if ds.space == "raw":
        images = normalize(images, ds.info)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_tensor_file(images.float().contiguous(), out)
    return out


