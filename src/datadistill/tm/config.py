"""The configuration of the trajectory-matching distiller: the ``distill`` section and the
stage config, and the one rule for resuming a checkpoint under a config.

Strategy fields (defaults = MTT): ``window`` "expanding" (DATM), ``label_mode`` "soft" with
``lr_y``/``momentum_y`` (DATM/PAD), ``pix_init`` "samples_predicted_correctly" (DATM),
``threshold`` (DATM: skip the update when the loss exceeds it), ``ema_decay`` (FTD),
``param_mask`` + ``param_mask_ratio`` (PAD). Gradient mode (any preset): ``grad_mode``
"unrolled" (official) or "adjoint" (:func:`datadistill.matching.student_trajectory` then
:func:`datadistill.matching.adjoint_backward`: the same gradient at the memory of one student
step; a skipped iteration skips the backward pass), with ``micro_batch`` chunks.
``threshold`` and ``ema_decay`` are coupled on purpose: the EMA is updated after each image
update, as FTD's is after each optimiser step, so an iteration skipped by the threshold
updates neither the images nor the EMA (which thus averages updates, not iterations). No
official code combines the two: DATM has the skip and no EMA, FTD the EMA and no skip.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from datadistill.checks import check_positive
from datadistill.config import RunContext, check_choice, check_saved_config
from datadistill.errors import ConfigError
from datadistill.matching.axes import (
    AXES,
    EmaAxis,
    GradAxis,
    LabelAxis,
    MaskAxis,
    WindowAxis,
    check_at_least,
)
from datadistill.training import derive_seeds

PIX_INITS = ("real", "noise", "samples_predicted_correctly")
# Keys that may change when a run is resumed (the rest must match the checkpoint).
RESUMABLE_KEYS = ("iterations", "eval_every", "eval_runs", "eval_epochs", "eval_batch",
                  "device", "data_root", "expert_dir", "checkpoint_every", "memory_check",
                  "snapshots")


@dataclass
class DistillSection(GradAxis, EmaAxis, MaskAxis, LabelAxis, WindowAxis):
    """The ``distill:`` section of a pipeline config: the loop's own keys, and the strategy
    axes (window, labels, mask, ema, grad: :mod:`datadistill.matching.axes`) that presets
    switch. Defaults are MTT's (``distill.py`` argparse). The bases are listed last axis
    first, so that the fields (and ``Valid keys`` of an error) read window, labels, mask,
    ema, grad, then the loop's own."""

    syn_steps: int = 20  # N: unrolled student steps per iteration
    lr_img: float = 1000.0  # SGD lr on the pixels (momentum 0.5)
    lr_lr: float = 1e-5  # SGD lr on the learnable step size (momentum 0.5)
    lr_teacher: float = 0.01  # initial learnable step size alpha_0
    batch_syn: int | None = None  # synthetic mini-batch per student step; None = all images
    pix_init: str = "real"  # real | noise | samples_predicted_correctly (DATM)
    iterations: int = 5000  # outer updates
    eval_every: int = 100  # evaluate at 0, eval_every, ... and at the last iteration
    eval_runs: int = 5  # fresh networks per evaluation (0: no evaluation, best = last)
    eval_epochs: int = 1000  # training epochs per evaluation network (classic protocol)
    eval_batch: int = 256  # evaluation mini-batch
    expert_dir: str | None = None  # expert store (distill(store=...) overrides it)
    max_experts: int | None = None  # use only the first K experts (ablations)
    dsa: bool = True  # DSA in the student steps and the evaluation
    dsa_strategy: str | None = None  # None: the dataset's default strategy
    threshold: float | None = None  # skip the update when the loss exceeds it (DATM: 1.0)
    checkpoint_every: int = 50  # iterations between checkpoints (also after every evaluation)

    def __post_init__(self) -> None:
        check_choice("distill.pix_init", self.pix_init, PIX_INITS)
        check_at_least(self, ("syn_steps", "checkpoint_every"), 1)
        check_at_least(self, ("iterations", "eval_every", "eval_runs"), 0)
        check_positive("distill.lr_teacher (initial step size)", self.lr_teacher)
        if self.batch_syn is not None and self.batch_syn < 1:
            raise ConfigError(f"distill.batch_syn must be >= 1 or null, got {self.batch_syn}")
        for axis in AXES:  # each strategy axis is validated beside its math (matching/*.py)
            axis.check(self)


@dataclass
class DistillConfig(DistillSection, RunContext):
    """Trajectory-matching hyper-parameters; defaults are MTT's (``distill.py`` argparse).

    The keys are flat: the run context (data, model, seed, device: :class:`RunContext`),
    ``method`` and ``ipc``, then the ``distill`` section (:class:`DistillSection`, grouped by
    strategy axis in :mod:`datadistill.matching.axes`).

    ``grad_mode`` chooses how the gradient reaches the images, the step size and the soft
    labels through the ``syn_steps`` student steps. ``"unrolled"`` (default, the official
    way) keeps the graph of every step: memory grows with syn_steps x batch_syn.
    ``"adjoint"`` runs the steps without a graph, then replays them backwards one at a time
    (:mod:`datadistill.matching.adjoint`): the same gradient up to rounding, from the same
    random draws, at the memory of one step, for about one extra forward and backward per
    step. ``micro_batch`` (adjoint only) also splits each step's mini-batch into chunks of
    that many images, so one step's graph holds ``micro_batch`` images; exact for students
    whose samples do not interact (a BatchNorm student is refused). Both are fixed for a run:
    a checkpoint resumes only with the values it was written with.

    Example:
        >>> cfg = DistillConfig(dataset="cifar100", ipc=50, syn_steps=80, batch_syn=125,
        ...                     grad_mode="adjoint", micro_batch=25)
        >>> cfg.grad_mode, cfg.micro_batch
        ('adjoint', 25)
    """

    method: str = "mtt"  # preset name, recorded with the outputs
    ipc: int = 1  # synthetic images per class

    def __post_init__(self) -> None:
        check_at_least(self, ("ipc",), 1)
        super().__post_init__()



def check_resume(cfg: DistillConfig, saved: dict, path: Path) -> None:
    """A checkpoint written with ``saved`` may be resumed under ``cfg`` (else an error)."""
    now = dataclasses.asdict(cfg)
    # A key added after the checkpoint was written (e.g. grad_mode) had its default then.
    saved = {f.name: f.default for f in dataclasses.fields(DistillConfig)
             if f.default is not dataclasses.MISSING} | saved
    check_saved_config(saved, now, path, what="config", free=RESUMABLE_KEYS,
                       fix="resume with the same settings, or rerun with --restart (Python: "
                       "resume=False) to start over.")


def stage_seeds(seed: int, n: int) -> list[int]:
    """``n`` seeds of the distillation stage's own stream, derived from ``seed``."""
    return list(derive_seeds(seed, 7, n=n))
