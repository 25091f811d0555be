"""INFER: dataset distillation with inter-class feature compensators.

Zhang, Du, Liu, Zhou, "Breaking Class Barriers: Efficient Dataset Distillation via Inter-Class
Feature Compensator", ICLR 2025 (official code: github.com/zhangxin-xd/UFC).

Pipeline: :func:`train_teachers` (the M BatchNorm teachers) -> :func:`run_infer` (class
groups, one shared compensator per group and teacher, static ensemble labels, the compact
:class:`InferSet` on disk, INFER-style student evaluation). Components live in
``compensators``, ``labels``, ``store`` and ``student``; configuration in ``config``.

Example:
    >>> cfg = InferConfig(dataset="digits", teacher_dir="runs/digits_teachers")
    >>> train_teachers(cfg, cfg.teacher_dir)                               # doctest: +SKIP
    >>> run_infer(cfg, "runs/digits_infer").report                         # doctest: +SKIP
"""

from datadistill.infer.compensators import (
    BNStatistics,
    CompensatorSettings,
    bn_distance,
    generate_compensators,
    optimise_compensator,
    sample_class_groups,
)
from datadistill.infer.config import (
    InferConfig,
    StudentConfig,
    TeacherConfig,
    instances_per_class,
    load_infer_config,
    num_groups,
)
from datadistill.infer.labels import ensemble_logits, kd_loss, sample_mixup
from datadistill.infer.pipeline import (
    InferResult,
    distill_infer,
    load_teachers,
    random_soft_subset,
    run_infer,
)
from datadistill.infer.store import (
    InferSet,
    Instances,
    StorageReport,
    load_infer_set,
    save_infer_set,
)
from datadistill.infer.student import (
    StudentRun,
    build_student,
    evaluate_classic,
    evaluate_student,
    evaluate_student_images,
    train_student,
)
from datadistill.infer.teachers_train import (
    TeacherCheckpoint,
    TeacherStore,
    train_teacher,
    train_teachers,
)

__all__ = [
    "BNStatistics",
    "CompensatorSettings",
    "InferConfig",
    "load_infer_config",
    "InferResult",
    "InferSet",
    "Instances",
    "StorageReport",
    "StudentConfig",
    "StudentRun",
    "TeacherConfig",
    "TeacherCheckpoint",
    "TeacherStore",
    "bn_distance",
    "build_student",
    "distill_infer",
    "ensemble_logits",
    "evaluate_classic",
    "evaluate_student",
    "evaluate_student_images",
    "generate_compensators",
    "instances_per_class",
    "kd_loss",
    "load_infer_set",
    "load_teachers",
    "random_soft_subset",
    "num_groups",
    "optimise_compensator",
    "run_infer",
    "sample_class_groups",
    "sample_mixup",
    "save_infer_set",
    "train_student",
    "train_teacher",
    "train_teachers",
]
