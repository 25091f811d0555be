"""Configuration of the INFER recipe; every default is the official CIFAR value.

Sources: INFER (Zhang et al., ICLR 2025) and its official code (zhangxin-xd/UFC:
``sh/ufc_cifar.sh``, ``ufc_generation/ufc_cifar.py``, ``ufc_validation/val_static.py``,
``val_dyn.py``); the teachers follow the README's pointer to DWA's ``squeeze_cifar100.py``.
See ``research/infer-and-evaluation.md`` part A.

YAML files under ``configs/<dataset>/infer_ipc<N>.yaml`` fill :class:`InferConfig`; nested
sections ``teachers:`` and ``student:`` fill :class:`TeacherConfig` and
:class:`StudentConfig` (overrides look like ``teachers.epochs=2``).

Example:
    >>> cfg = InferConfig.of(dataset="cifar100", ipc=10)
    >>> num_groups(cfg.ipc, len(cfg.teachers.archs), 100)
    9
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datadistill.checks import check_infer
from datadistill.config import (
    config_from_dict,
    config_of,
    expect_recipe,
    flat_section,
    read_config,
)
from datadistill.errors import ConfigError
from datadistill.infer.compensators import CompensatorSettings
from datadistill.runtime.devices import resolve_device

INFER_TEACHERS = ["resnet18_cifar", "mobilenetv2_cifar", "efficientnet_b0_cifar", "shufflenet_g2"]


@dataclass
class TeacherConfig:
    """How the M teachers ("squeeze" models) are trained on the full training set."""

    archs: list[str] = field(default_factory=lambda: list(INFER_TEACHERS))  # order = m index
    width_mult: float = 1.0  # channel multiplier of every teacher (1.0 = published sizes)
    epochs: int = 200  # DWA squeeze_cifar100.py: 200 epochs, last checkpoint kept
    batch_size: int = 128
    lr: float = 0.1  # SGD, cosine annealing over the epochs (stepped per epoch)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    crop_padding: int | None = None  # RandomCrop pad (black); None: 4 px at 32 px, scaled
    flip: bool | None = None  # horizontal flip; None: on unless the dataset is digit-like
    seed: int = 0  # per teacher, seed + its index in archs
    test_batch_size: int = 512  # evaluation only; no effect on results
    # ImageNet (ufc_imgnet.py): pretrained teachers, arch -> torchvision state-dict file;
    # when set, nothing is trained and archs must be ImageNet architectures.
    checkpoints: dict[str, str] | None = None


@dataclass
class StudentConfig:
    """How INFER trains and tests a student on the distilled set (val_static / val_dyn)."""

    model: str = "resnet18_cifar"  # a teacher name (models/teachers.py) or any create_model name
    model_kwargs: dict = field(default_factory=dict)  # extra arguments to the model factory
    labels: str = "static"  # "static": stored ensemble logits; "dynamic": teachers online
    epochs: int = 400  # with static labels (README)
    dynamic_epochs: int = 80  # with dynamic labels: 400 / (M + 1) (README)
    batch_size: int = 64  # README (code default 128)
    lr: float = 1e-3  # AdamW, hard-coded in the official scripts
    weight_decay: float = 0.01
    temperature: float = 30.0  # KL(log_softmax(s/T) || softmax(t/T)), batchmean, no T^2
    mixup_alpha: float = 0.8  # lambda ~ Beta(0.8, 0.8), one per batch
    crop_padding: int | None = None  # RandomCrop pad; None: 4 px at 32 px, scaled by size
    flip: bool | None = None  # None: on unless the dataset is digit-like
    eval_every: int = 10  # test at epochs 0, 10, 20, ... and the last (best-of is reported)
    num_runs: int = 1  # independently initialised students; 0 skips evaluation
    test_batch_size: int = 512  # evaluation only; no effect on results
    # ImageNet (SRe2L's validation): "resized_crop_flip" = RandomResizedCrop(0.08-1) + flip
    # per sample instead of "crop_flip" (RandomCrop(pad) + flip); "cutmix" instead of "mixup".
    augment: str = "crop_flip"
    mix: str = "mixup"
    cutmix_beta: float = 1.0  # lambda ~ Beta(beta, beta) for mix: cutmix
    dynamic_teachers: list[str] | None = None  # who labels dynamically (None: all M teachers)


@dataclass
class InferData:
    """Which real data INFER reads; its keys are spelt flat in files (``dataset: cifar100``)."""

    dataset: str = "cifar100"  # datadistill.data registry name
    data_root: str | None = None  # None: the data module's default location
    download: bool = False  # let the data module fetch missing files
    train_per_class: int | None = None  # class-balanced train subset for teachers and groups


@dataclass
class InferConfig:
    """One INFER distillation: data, teachers, compensators, labels and evaluation.

    ``data`` (:class:`InferData`) and ``compensator`` (:class:`~datadistill.infer.compensators.
    CompensatorSettings`, one per (class group, teacher); ``sh/ufc_cifar.sh``'s values) are
    nested sections whose keys files spell flat (``iterations: 1000``, ``iterations=5``), read
    and written through :func:`datadistill.config.key_aliases`. Build one from flat keys with
    :meth:`of`.
    """

    data: InferData = flat_section(InferData)
    ipc: int = 10  # nominal budget, in image-sized tensors per class
    device: str = "cpu"
    seed: int = 0  # class-group sampling, jitter and students (run r uses seed + r)
    teacher_dir: str | None = None  # store written by train_teachers (`datadistill teachers`)
    teachers: TeacherConfig = field(default_factory=TeacherConfig)
    compensator: CompensatorSettings = flat_section(CompensatorSettings)
    label_batch_size: int = 256  # teacher forward passes for static labels; no effect
    # Per-channel normalisation of teachers, compensators and students; None: the dataset's.
    # Set where INFER lists other statistics than the dataset module (Tiny ImageNet).
    mean: list[float] | None = None
    std: list[float] | None = None
    student: StudentConfig = field(default_factory=StudentConfig)

    @classmethod
    def of(cls, **keys: Any) -> InferConfig:
        """The config from keys spelt as files spell them (``dataset="digits"``,
        ``iterations=2``), or with a section given whole (``data=InferData(...)``)."""
        return config_of(cls, keys)

    def __post_init__(self) -> None:
        if self.ipc < 1:
            raise ConfigError(f"ipc must be at least 1, got {self.ipc}")
        if self.compensator.iterations < 0:
            raise ConfigError(
                f"iterations must be >= 0, got {self.compensator.iterations}")
        if self.student.labels not in ("static", "dynamic"):
            raise ConfigError(
                f"student.labels must be 'static' or 'dynamic', got '{self.student.labels}'"
            )
        if not self.teachers.archs:
            raise ConfigError("teachers.archs is empty; name at least one teacher architecture")
        if (self.mean is None) != (self.std is None):
            raise ConfigError("set both mean and std (per-channel normalisation), or neither")
        st = self.student
        if st.augment not in ("crop_flip", "resized_crop_flip") or st.mix not in ("mixup",
                                                                                 "cutmix"):
            raise ConfigError(f"student.augment must be crop_flip or resized_crop_flip and "
                              f"student.mix mixup or cutmix, got {st.augment!r}, {st.mix!r}")
        unknown = set(st.dynamic_teachers or []) - set(self.teachers.archs)
        if unknown:
            raise ConfigError(f"student.dynamic_teachers {sorted(unknown)} are not in "
                              f"teachers.archs {self.teachers.archs}")


def num_groups(ipc: int, num_teachers: int, num_classes: int) -> int:
    """K, the number of class groups for the budget K * (C + M) <= IPC * C (INFER Sec. 3.3).

    Computed as the official code does, ``int(ipc / (M / C + 1))`` in floating point, and kept
    on purpose (a faithful quirk): it is usually the largest K that fits, but where the
    exact quotient is an integer, rounding can drop it by one. For C 10, IPC 33, M 1 the
    quotient is exactly 30 (30 * 11 = 330 = 33 * 10) yet the float gives 29.999..., so K is 29.
    The budget is never exceeded.

    Example:
        >>> num_groups(10, 4, 10), num_groups(50, 4, 100), num_groups(33, 1, 10)
        (7, 48, 29)
    """
    k = int(ipc / (num_teachers / num_classes + 1))
    if k < 1:
        raise ConfigError(
            f"ipc={ipc} leaves no room for one class group of {num_classes} images plus "
            f"{num_teachers} compensators; raise ipc or use fewer teachers"
        )
    return k


def instances_per_class(ipc: int, num_teachers: int, num_classes: int) -> int:
    """K * (M + 1) training instances per class (the base image and its M compensated copies).

    Example:
        >>> instances_per_class(10, 4, 100)
        45
    """
    return num_groups(ipc, num_teachers, num_classes) * (num_teachers + 1)


def load_infer_config(name_or_path: str | Path, overrides: list[str] | None = None
                      ) -> InferConfig:
    """Read a shipped or user INFER config (``recipe: infer``) with ``key=value`` overrides.

    ``device: auto`` (or none given) becomes the visible accelerator, else the CPU.

    Example:
        >>> load_infer_config("digits/infer_ipc10", ["ipc=20"]).ipc
        20
    """

    raw = expect_recipe(read_config(name_or_path, overrides), "infer", name_or_path)
    raw["device"] = resolve_device(raw.get("device", "auto"))
    cfg = config_from_dict(InferConfig, raw)
    check_infer(cfg)
    return cfg
