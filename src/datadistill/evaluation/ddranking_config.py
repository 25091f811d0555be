"""DD-Ranking's settings: the config of one score, its presets per method (every value in
``configs/_evaluation/ddranking.yaml``), the full-data accuracies it caches and the hard labels
of a soft-label set.

Example:
    >>> preset_for("datm").train.loss
    'sce'
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch

from datadistill.config import extended_values, packaged_values
from datadistill.errors import CompatibilityError, ConfigError
from datadistill.evaluation.challenge import challenge_labels
from datadistill.evaluation.ddranking_train import TrainSpec
from datadistill.labels import hard_labels, is_soft

SETTINGS_FILE = "_evaluation/ddranking"  # configs/_evaluation/ddranking.yaml: every value
HARD_LABEL_VARIANTS = ("class_order", "argmax")


@dataclass
class DDRankingConfig:
    """DD-Ranking's evaluator settings; defaults are its MTT / DSA / DM configs (hard labels)."""

    labels: str = "hard"  # "hard" | "soft" (the set's labels are teacher/learned logits)
    soft_label_mode: str = "S"  # S: stored logits per image; M: teachers on every batch
    train: TrainSpec = field(default_factory=lambda: TrainSpec(lr=0.01))  # lr: placeholder
    aug_for_hard: bool = True  # use_aug_for_hard: augment the hard-label trainings too
    hard_label_variant: str = "class_order"  # DD-Ranking: labels by class order of the set
    rounds: int = 5  # num_eval
    lr_grid: tuple[float, ...] = field(default_factory=lambda: tuple(SETTINGS["lr_grid"]))
    full: TrainSpec = field(  # REAL_DATA_TRAINING_CONFIG (ddranking.yaml `full`)
        default_factory=lambda: TrainSpec(**SETTINGS["full"]))
    full_accuracy: float | None = None  # a known full-data accuracy (fraction): skip step 4
    full_from_cache: bool = True  # use DD-Ranking's cached full-data accuracy where it has one
    ars: bool = True  # also train without augmentation and report ARS
    lrs_weight: float = 0.5  # lrs_lambda
    ars_weight: float = 0.5  # ars_lambda
    model: str = "convnet"
    model_kwargs: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.labels not in ("hard", "soft"):
            raise ConfigError(f"labels={self.labels!r}; choose 'hard' or 'soft'")
        if self.soft_label_mode not in ("S", "M"):
            raise ConfigError(f"soft_label_mode={self.soft_label_mode!r}; choose 'S' or 'M'")
        if self.hard_label_variant not in HARD_LABEL_VARIANTS:
            raise ConfigError(
                f"hard_label_variant={self.hard_label_variant!r}; choose from "
                f"{HARD_LABEL_VARIANTS}"
            )
        if self.rounds < 1 or not self.lr_grid:
            raise ConfigError("rounds must be >= 1 and lr_grid non-empty")


# ----------------------------------------------------------------------------- presets

# Every value lives in configs/_evaluation/ddranking.yaml (read once, here).
SETTINGS: dict[str, Any] = packaged_values(SETTINGS_FILE)
PRESETS: dict[str, dict] = {  # preset name -> its values (``extends:`` resolved)
    name: extended_values(name, SETTINGS["presets"], "DD-Ranking preset")
    for name in SETTINGS["presets"]}
METHOD_PRESETS: dict[str, str] = SETTINGS["methods"]  # our methods -> DD-Ranking preset
ADDED_METHODS: dict[str, str] = {}  # methods added from outside (tm.presets.register_preset)


def preset_for(method_or_preset: str, **overrides: Any) -> DDRankingConfig:
    """The DD-Ranking config of a method (``mtt``, ``datm``...) or a preset (``hard_dsa``...).

    `overrides` replace top-level fields; ``train=`` / ``full=`` take dicts of TrainSpec fields.

    Example:
        >>> preset_for("datm").train.loss
        'sce'
        >>> preset_for("mtt", rounds=3, train={"epochs": 100}).train.epochs
        100
    """
    methods = METHOD_PRESETS | ADDED_METHODS
    name = methods.get(method_or_preset, method_or_preset)
    if name not in PRESETS:
        raise ConfigError(
            f"no DD-Ranking config for {method_or_preset!r}; use a method of "
            f"{sorted(methods)} or a preset of {sorted(PRESETS)}"
        )
    values = {**PRESETS[name], **overrides}
    train = {**PRESETS[name].get("train", {}), **overrides.get("train", {})}
    values["train"] = TrainSpec(**{"lr": 0.01, **train})
    base_full = DDRankingConfig().full
    values["full"] = replace(base_full, **{**PRESETS[name].get("full", {}),
                                           **overrides.get("full", {})})
    return DDRankingConfig(**values)


# DD-Ranking's cached full-data accuracies (ddranking.yaml `full_accuracy_cache`):
# (dataset, our model) -> (fraction, DD-Ranking's cache key).
CACHED_FULL: dict[tuple[str, str], tuple[float, str]] = {
    (dataset, v["model"]): (float(v["accuracy"]), v["name"])
    for dataset, v in SETTINGS["full_accuracy_cache"].items()}
FULL_ACCURACY_CACHE: dict[tuple[str, str], float] = {k: v[0] for k, v in CACHED_FULL.items()}


def full_accuracy_for(cfg: DDRankingConfig, dataset: str) -> tuple[float | None, str]:
    """The full-data accuracy a score uses without training, and where it comes from:
    ``cfg.full_accuracy`` ("given"), DD-Ranking's cache for (dataset, model) unless
    ``cfg.full_from_cache`` is off, else None ("trained").

    Example:
        >>> full_accuracy_for(preset_for("sre2l", model="resnet18_bn"), "tiny_imagenet")
        (0.464, "DD-Ranking's cached full-data accuracy (TinyImageNet-ResNet-18-BN: 46.4)")
        >>> full_accuracy_for(preset_for("mtt"), "cifar10")
        (None, 'trained')
    """
    if cfg.full_accuracy is not None:
        return cfg.full_accuracy, "given"
    cached = CACHED_FULL.get((dataset, cfg.model))
    if cached is not None and cfg.full_from_cache:
        accuracy, name = cached
        return accuracy, f"DD-Ranking's cached full-data accuracy ({name}: {100 * accuracy:.1f})"
    return None, "trained"


# ----------------------------------------------------------------------------- labels


def class_order_labels(num_classes: int, n: int) -> torch.Tensor:
    """DD-Ranking's hard labels: [0]*ipc + [1]*ipc + ... for a class-major set of n images."""
    if n % num_classes:
        raise CompatibilityError(
            f"{n} images are not a whole number of images per class ({num_classes} classes); "
            "class-order labels need a class-major set, use hard_label_variant='argmax'"
        )
    return challenge_labels(num_classes, n // num_classes)  # the same order as the challenge


def hard_labels_for(labels: torch.Tensor, num_classes: int, variant: str) -> torch.Tensor:
    """(N,) hard labels of a set: given hard labels as they are; soft ones by `variant`.

    ``class_order`` is DD-Ranking's (labels by the set's class-major order), ``argmax`` the
    argmax of the soft logits.

    Example:
        >>> hard_labels_for(torch.tensor([[0.1, 2.0], [3.0, 0.0]]), 2, "class_order")
        tensor([0, 1])
    """
    if not is_soft(labels):
        return labels
    if variant == "argmax":
        return hard_labels(labels)
    if variant == "class_order":
        return class_order_labels(num_classes, labels.shape[0]).to(labels.device)
    raise ConfigError(f"hard label variant {variant!r}; choose from {HARD_LABEL_VARIANTS}")
