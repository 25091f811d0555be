"""The configuration of the trajectory-matching distiller: the ``distill`` section and the
stage config, and the one rule for resuming a checkpoint under a config.

The strategy axes are nested sections (``cfg.window``, ``cfg.labels``, ``cfg.mask``,
``cfg.ema``, ``cfg.grad``: :mod:`datadistill.matching.axes`) whose keys are spelt flat
wherever a config is written: ``distill.grad_mode=adjoint`` in YAML files and overrides, and
``grad_mode`` in every saved ``config.json``, checkpoint and distilled set. One alias table
(:func:`datadistill.config.key_aliases`, derived from the sections declared with
:func:`~datadistill.config.flat_section`) maps each flat key to its nested path; configs are
read through it and written back flat (:func:`~datadistill.config.config_asdict`), so files
written before the sections were nested read the same.

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
from typing import Any

from datadistill.checks import check_positive
from datadistill.config import (
    RunContext,
    check_choice,
    check_saved_config,
    config_asdict,
    flat_fields,
    flat_section,
    flat_sections,
    nest_keys,
)
from datadistill.errors import ConfigError
from datadistill.matching.axes import (
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
class DistillSection:
    """The ``distill:`` section of a pipeline config: the strategy axes that presets switch
    (nested sections, each validated beside its math when built: :mod:`datadistill.matching.
    axes`), then the loop's own keys. Defaults are MTT's (``distill.py`` argparse). The axes
    come first, so that the flat keys (as saved, and as ``Valid keys`` of an error lists
    them) read window, labels, mask, ema, grad, then the loop's own.

    Example:
        >>> section = DistillSection.of(grad_mode="adjoint", syn_steps=10)
        >>> section.grad.grad_mode, section.syn_steps
        ('adjoint', 10)
    """

    window: WindowAxis = flat_section(WindowAxis)
    labels: LabelAxis = flat_section(LabelAxis)
    mask: MaskAxis = flat_section(MaskAxis)
    ema: EmaAxis = flat_section(EmaAxis)
    grad: GradAxis = flat_section(GradAxis)
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

    @classmethod
    def of(cls, **keys: Any):
        """The config from keys spelt as files spell them (``grad_mode="adjoint"``), or with a
        section given whole (``grad=GradAxis(...)``); values as given, not coerced."""
        sections = flat_sections(cls)
        whole = {k: v for k, v in keys.items() if k in sections and isinstance(v, sections[k])}
        grouped = nest_keys(cls, {k: v for k, v in keys.items() if k not in whole})
        if both := sorted(set(whole) & set(grouped)):
            raise TypeError(f"{cls.__name__}: section {both[0]} given whole and by its keys")
        return cls(**whole, **{k: sections[k](**v) if k in sections else v
                               for k, v in grouped.items()})


@dataclass
class DistillConfig(DistillSection, RunContext):
    """Trajectory-matching hyper-parameters; defaults are MTT's (``distill.py`` argparse).

    The run context (data, model, seed, device: :class:`RunContext`), ``method`` and ``ipc``,
    then the ``distill`` section (:class:`DistillSection`: the strategy axes as nested
    sections, then the loop's keys). Saved flat (:func:`~datadistill.config.config_asdict`).

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
        >>> cfg = DistillConfig.of(dataset="cifar100", ipc=50, syn_steps=80, batch_syn=125,
        ...                        grad_mode="adjoint", micro_batch=25)
        >>> cfg.grad.grad_mode, cfg.grad.micro_batch
        ('adjoint', 25)
    """

    method: str = "mtt"  # preset name, recorded with the outputs
    ipc: int = 1  # synthetic images per class

    def __post_init__(self) -> None:
        check_at_least(self, ("ipc",), 1)
        super().__post_init__()



def check_resume(cfg: DistillConfig, saved: dict, path: Path) -> None:
    """A checkpoint written with ``saved`` may be resumed under ``cfg`` (else an error)."""
    now = config_asdict(cfg)  # flat, as checkpoints hold it
    # A key added after the checkpoint was written (e.g. grad_mode) had its default then.
    saved = {name: f.default for name, f in flat_fields(DistillConfig)
             if f.default is not dataclasses.MISSING} | saved
    check_saved_config(saved, now, path, what="config", free=RESUMABLE_KEYS,
                       fix="resume with the same settings, or rerun with --restart (Python: "
                       "resume=False) to start over.")


def stage_seeds(seed: int, n: int) -> list[int]:
    """``n`` seeds of the distillation stage's own stream, derived from ``seed``."""
    return list(derive_seeds(seed, 7, n=n))
