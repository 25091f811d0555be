"""INFER: dataset distillation with inter-class feature compensators.

Zhang, Du, Liu, Zhou, "Breaking Class Barriers: Efficient Dataset Distillation via Inter-Class
Feature Compensator", ICLR 2025 (official code: github.com/zhangxin-xd/UFC).

Pipeline: :func:`train_teachers` (the M BatchNorm teachers) -> :func:`run_infer` (class
groups, one shared compensator per group and teacher, static ensemble labels, the compact
:class:`InferSet` on disk, INFER-style student evaluation). Components live in
``compensators``, ``labels``, ``store`` and ``student``; configuration in ``config``.

The names below load on first use (PEP 562): importing a submodule, such as the CLI's
``datadistill.infer.commands``, loads no torch.

Example:
    >>> cfg = InferConfig.of(dataset="digits", teacher_dir="runs/digits_teachers")
    >>> train_teachers(cfg, cfg.teacher_dir)                               # doctest: +SKIP
    >>> run_infer(cfg, "runs/digits_infer").report                         # doctest: +SKIP
"""

from __future__ import annotations

import importlib

# submodule -> the names it gives this package
_EXPORTS: dict[str, tuple[str, ...]] = {
    "compensators": (
        "BNStatistics", "CompensatorSettings", "bn_distance", "generate_compensators",
        "optimise_compensator", "sample_class_groups"),
    "config": (
        "InferConfig", "StudentConfig", "TeacherConfig", "instances_per_class",
        "load_infer_config", "num_groups"),
    "labels": ("ensemble_logits", "kd_loss", "sample_mixup"),
    "pipeline": (
        "InferResult", "distill_infer", "load_teachers", "random_soft_subset", "run_infer"),
    "store": ("InferSet", "Instances", "StorageReport", "load_infer_set", "save_infer_set"),
    "student": (
        "StudentRun", "build_student", "evaluate_classic", "evaluate_student",
        "evaluate_student_images", "train_student"),
    "teachers_train": (
        "TeacherCheckpoint", "TeacherStore", "train_teacher", "train_teachers"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
