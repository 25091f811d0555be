"""The ECCV-2024 Dataset Distillation Challenge (track 1) settings, checked strictly.

The official evaluator (``DataDistillation/ECCV2024-Dataset-Distillation-Challenge``,
``evaluate.py``; research note infer-and-evaluation.md C.2) scores ``cifar100.pt``
(1000, 3, 32, 32) and ``tinyimagenet.pt`` (2000, 3, 64, 64): IPC 10, labels by class order,
ConvNet-3 (instance norm) at both resolutions, SGD lr 0.01 momentum 0.9 weight decay 5e-4,
1000 + 1 epochs with the lr x0.1 after epoch 501, batch 256, DSA
``color_crop_cutout_flip_scale_rotate``, 3 runs, one test at the end on test tensors normalised
with the dataset's mean/std. The score is the mean over the runs, and the final score the mean
of the two datasets, written to ``scores.txt`` as ``correct: <score>``.

:func:`challenge_violations` lists every setting of an evaluation that differs from this;
``evaluate(protocol="challenge")`` refuses such an evaluation unless ``unofficial=True``, and
then marks the report (``settings["official"]``, ``settings["unofficial_settings"]``).

Example:
    >>> official = ChallengeRun(ipc=10, epochs=1000, num_runs=3, batch_size=256,
    ...                         dsa_strategy="color_crop_cutout_flip_scale_rotate")
    >>> challenge_violations((1000, 3, 32, 32), "cifar100", "normalized", official,
    ...                      mean=CIFAR100_MEAN, std=CIFAR100_STD)
    []
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from datadistill.data import dataset_info
from datadistill.errors import ConfigError

IPC = 10
EPOCHS = 1000  # trained for EPOCHS + 1 epochs
RUNS = 3
BATCH_SIZE = 256
DSA_STRATEGY = "color_crop_cutout_flip_scale_rotate"
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# dataset -> (submission shape, normalisation of the reference test tensors)
OFFICIAL = {
    "cifar100": ((1000, 3, 32, 32), CIFAR100_MEAN, CIFAR100_STD),
    "tiny_imagenet": ((2000, 3, 64, 64), IMAGENET_MEAN, IMAGENET_STD),
}
FILES = {"cifar100": "cifar100.pt", "tiny_imagenet": "tinyimagenet.pt"}


def challenge_labels(num_classes: int, ipc: int) -> torch.Tensor:
    """The challenge's implied labels: [0]*ipc + [1]*ipc + ... as (classes*ipc,) int64."""
    return torch.arange(num_classes).repeat_interleave(ipc)


@dataclass(frozen=True)
class ChallengeRun:
    """The settings of an evaluation that the official evaluator fixes (besides the data)."""

    ipc: int
    epochs: int
    num_runs: int
    dsa_strategy: str | None  # None: no augmentation
    batch_size: int


def challenge_violations(shape: Sequence[int], dataset: str, space: str, run: ChallengeRun, *,
                         mean: Sequence[float], std: Sequence[float]) -> list[str]:
    """Each setting that differs from the official evaluator, as ``"name=value (official: x)"``.

    Example:
        >>> run = ChallengeRun(ipc=10, epochs=300, num_runs=3, dsa_strategy=DSA_STRATEGY,
        ...                    batch_size=256)
        >>> challenge_violations((1000, 3, 32, 32), "cifar100", "normalized", run,
        ...                      mean=CIFAR100_MEAN, std=CIFAR100_STD)
        ['epochs=300 (official: 1000, trained 1000 + 1)']
    """
    out = []
    if dataset not in OFFICIAL:
        out.append(f"dataset={dataset!r} (official: cifar100 or tiny_imagenet)")
    else:
        want, want_mean, want_std = OFFICIAL[dataset]
        if tuple(shape) != want:
            out.append(f"images shape={tuple(shape)} (official for {dataset}: {want})")
        if not _close(mean, want_mean) or not _close(std, want_std):
            out.append(f"normalisation mean={tuple(mean)} std={tuple(std)} "
                       f"(official: {want_mean} / {want_std})")
    if run.ipc != IPC:
        out.append(f"ipc={run.ipc} (official: {IPC})")
    if space != "normalized":
        out.append(f"test set space={space!r} (official: normalized)")
    if run.epochs != EPOCHS:
        out.append(f"epochs={run.epochs} (official: {EPOCHS}, trained {EPOCHS} + 1)")
    if run.num_runs != RUNS:
        out.append(f"runs={run.num_runs} (official: {RUNS})")
    if run.dsa_strategy != DSA_STRATEGY:
        out.append(f"dsa_strategy={run.dsa_strategy!r} (official: {DSA_STRATEGY!r})")
    if run.batch_size != BATCH_SIZE:
        out.append(f"batch_size={run.batch_size} (official: {BATCH_SIZE})")
    return out


def _close(a: Sequence[float], b: Sequence[float]) -> bool:
    return len(a) == len(b) and all(abs(x - y) < 1e-6 for x, y in zip(a, b, strict=True))


def refuse_unofficial(violations: list[str]) -> None:
    """Raise naming every non-official setting (the strict scorer's default)."""
    if violations:
        raise ConfigError(
            "challenge: not the official evaluation: " + "; ".join(violations)
            + ". Use the official settings, or pass unofficial=True (CLI: --unofficial) to "
            "score anyway; the report is then marked unofficial"
        )


def combined_score(per_dataset: dict[str, float]) -> float:
    """The challenge's final score: the mean of the CIFAR-100 and Tiny ImageNet scores.

    Example:
        >>> round(combined_score({"cifar100": 0.4061, "tiny_imagenet": 0.1831}), 4)
        0.2946
    """
    missing = [d for d in OFFICIAL if d not in per_dataset]
    if missing:
        raise ConfigError(f"the combined score needs both datasets; missing {missing}")
    return sum(per_dataset[d] for d in OFFICIAL) / len(OFFICIAL)


def write_scores_txt(path: str | Path, score: float) -> Path:
    """Write the official ``scores.txt``: ``correct: <score>`` (a fraction, no newline).

    Example:
        >>> write_scores_txt("out/scores.txt", 0.2946)                     # doctest: +SKIP
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"correct: {score}")
    return path


# The official script casts a submission with ``.float()`` and uses the values as they are
# (already normalised pixels; an integer tensor is not divided by 255).
ACCEPTED_DTYPES = "float16, bfloat16, float32, float64 or an integer type (uint8, int64, ...)"


def submission_images(obj: Any, path: str | Path) -> torch.Tensor:
    """The float32 images of a loaded submission file, as the official ``.float()`` makes them.

    What the official scorer accepts is accepted (a tensor of real floats or integers); a dict,
    tuple or list (images with labels or extra keys), a complex or bool tensor is a
    ConfigError naming the expected content.

    Example:
        >>> submission_images(torch.zeros(2, 3, 4, 4, dtype=torch.float16), "x.pt").dtype
        torch.float32
    """
    expected = ("the challenge takes one tensor of images (N, 3, H, W), class-major (labels "
                "are implied by order); save it with torch.save(images, path)")
    if isinstance(obj, dict):
        keys = ", ".join(repr(k) for k in list(obj)[:4])
        raise ConfigError(f"{path} holds a dict (keys {keys}), not a tensor; {expected}")
    if isinstance(obj, (tuple, list)):
        raise ConfigError(f"{path} holds a {type(obj).__name__} of {len(obj)} items, not a "
                          f"tensor; {expected} (soft labels are not scored)")
    if not isinstance(obj, torch.Tensor):
        raise ConfigError(f"{path} holds a {type(obj).__name__}, not a tensor; {expected}")
    if obj.is_complex() or obj.dtype == torch.bool or obj.is_quantized:
        raise ConfigError(f"{path} holds a {obj.dtype} tensor; the challenge takes real "
                          f"numbers: {ACCEPTED_DTYPES}")
    if obj.dim() != 4:
        raise ConfigError(f"{path} holds a tensor of shape {tuple(obj.shape)}; {expected}")
    return obj.detach().float()


def check_submissions(images: dict[str, torch.Tensor], *, epochs: int, num_runs: int,
                      unofficial: bool) -> dict[str, list[str]]:
    """Each dataset's non-official settings, all checked before any training (strict: an
    error naming them, unless `unofficial`)."""

    found = {}
    for dataset, x in images.items():
        info = dataset_info(dataset)
        run = ChallengeRun(ipc=x.shape[0] // info.num_classes, epochs=epochs,
                           num_runs=num_runs, dsa_strategy=info.dsa_strategy,
                           batch_size=BATCH_SIZE)
        found[dataset] = challenge_violations(tuple(x.shape), dataset, "normalized", run,
                                              mean=info.mean, std=info.std)
        if not unofficial:
            refuse_unofficial([f"{FILES[dataset]}: {v}" for v in found[dataset]])
    return found
