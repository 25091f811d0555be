"""Trajectory matching as pure functions: the unrolled student, the loss, the start window.

MTT (Cazenavette et al., CVPR 2022): from an expert checkpoint theta*_t, take N differentiable
SGD steps on the synthetic set and compare with theta*_{t+M}. The distillation loop
(:func:`datadistill.tm.distill.distill`) strings these together; method presets switch the
strategy modules beside them (``masks``: PAD, ``soft_labels``: DATM, ``ema``: FTD, ``init``:
DATM's image selection).

Example:
    >>> forward = student_forward(model)                                    # doctest: +SKIP
    >>> theta_n = unroll_student(forward, theta0, x, y, syn_lr, StudentSteps(20))  # doctest: +SKIP
    >>> loss = matching_loss(theta_n, theta0, target)                       # doctest: +SKIP
"""

from datadistill.matching.adjoint import (
    AdjointGrads,
    AdjointOptions,
    SnapshotStore,
    Trajectory,
    adjoint_backward,
    check_micro_batch,
    student_trajectory,
)
from datadistill.matching.loss import matching_loss
from datadistill.matching.student import (
    BatchSampler,
    StudentSteps,
    label_loss,
    student_forward,
    unroll_student,
)
from datadistill.matching.window import (
    WINDOWS,
    expanding_upper,
    sample_start_epoch,
    window_bounds,
)
from datadistill.models.convnet_kernels import ConvNetPlan, conv3x3, convnet_plan, norm_act_pool

__all__ = [
    "WINDOWS",
    "AdjointGrads",
    "AdjointOptions",
    "BatchSampler",
    "ConvNetPlan",
    "SnapshotStore",
    "StudentSteps",
    "Trajectory",
    "adjoint_backward",
    "check_micro_batch",
    "conv3x3",
    "convnet_plan",
    "expanding_upper",
    "label_loss",
    "matching_loss",
    "norm_act_pool",
    "sample_start_epoch",
    "student_forward",
    "student_trajectory",
    "unroll_student",
    "window_bounds",
]
