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
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from datadistill.checks import check_pipeline, check_positive
from datadistill.config import (
    DEFAULT_CONFIG,
    RunContext,
    check_choice,
    check_saved_config,
    config_asdict,
    config_from_dict,
    config_of,
    expect_recipe,
    fields_of,
    flat_fields,
    flat_section,
    merge,
    read_config,
)
from datadistill.errors import ConfigError
from datadistill.evaluation.protocols import RUN_PROTOCOLS
from datadistill.experts import ExpertConfig, ExpertSection
from datadistill.experts.pad import PADCurriculum
from datadistill.matching.axes import (
    EmaAxis,
    GradAxis,
    LabelAxis,
    MaskAxis,
    WindowAxis,
    check_at_least,
)
from datadistill.runtime.devices import resolve_device
from datadistill.tm.presets import preset_overrides
from datadistill.training import derive_seeds

PIX_INITS = ("real", "noise", "samples_predicted_correctly")
# Keys that may change when a run is resumed (the rest must match the checkpoint).
RESUMABLE_KEYS = ("iterations", "eval_every", "eval_runs", "eval_epochs", "eval_batch",
                  "device", "data_root", "expert_dir", "checkpoint_every", "memory_check",
                  "snapshots", "kept_graphs")


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
        return config_of(cls, keys)


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


# ----------------------------------------------------------------------------- the run


@dataclass
class EvaluationConfig:
    runs: int = 5  # fresh networks per evaluation (MTT: 5; the challenge scores 3 rounds)
    epochs: int = 1000  # classic protocol: 1000 (+1) epochs
    batch_size: int = 256  # classic protocol mini-batch (MTT/FTD 256, DATM/PAD 128)
    random_baseline: bool = True  # also evaluate a random real subset at the same IPC
    soft_random: bool = False  # soft-label methods: also the random subset with expert logits
    models: list[str] = field(default_factory=lambda: ["convnet"])  # >1: cross-architecture
    hard_labels: bool = False  # soft-label sets: also evaluate with argmax labels (DATM/PAD)
    protocols: list[str] = field(default_factory=lambda: ["classic"])  # + challenge, ddranking
    report: str = "last"  # classic: last | best_of_periodic (MTT/FTD's reporting) | both
    period: int = 100  # epochs between the periodic tests of best_of_periodic / both
    ddranking: dict = field(default_factory=dict)  # overrides of the method's DD-Ranking config

    def __post_init__(self) -> None:
        bad = [p for p in self.protocols if p not in RUN_PROTOCOLS]
        if bad or not self.protocols:
            raise ConfigError(f"evaluation.protocols={self.protocols}; choose from {RUN_PROTOCOLS}")
        if self.report not in ("last", "best_of_periodic", "both") or self.period < 1:
            raise ConfigError(f"evaluation.report={self.report!r}, period={self.period}; use "
                              "last | best_of_periodic | both and a period >= 1 epochs")
        if self.runs < 1 or self.epochs < 0 or self.batch_size < 1:
            raise ConfigError("evaluation.runs and batch_size must be >= 1 and epochs >= 0")


@dataclass
class PipelineConfig(RunContext):
    """One trajectory-matching run: the run context every stage shares (data, model, seed,
    device: :class:`~datadistill.config.RunContext`, top-level keys), ``method`` and ``ipc``,
    then one typed section per stage."""

    dataset: str = "digits"  # registry name; `digits` ships with the package
    device: str = "auto"  # "auto": cuda when available, else cpu
    method: str = "mtt"  # preset name; `datadistill presets` lists them
    download: bool = False  # fetch missing dataset files from their official URLs
    ipc: int = 1  # images per class of the distilled set
    experts: ExpertSection = field(default_factory=ExpertSection)
    distill: DistillSection = field(default_factory=DistillSection)
    curriculum: PADCurriculum | None = None  # PAD's expert data schedule; null: all data
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)

    def resolved_device(self) -> str:
        return resolve_device(self.device)


# Set once at the top level for every stage, never inside a stage section.
SHARED_KEYS = (*(f.name for f in fields(RunContext)), "method", "ipc")


def load_pipeline_config(name_or_path: str | None = None, overrides: list[str] | None = None):
    """Read a shipped or user YAML config, apply the preset and overrides, validate it all."""

    name_or_path = name_or_path or DEFAULT_CONFIG
    raw = expect_recipe(read_config(name_or_path, overrides), "tm", name_or_path)
    _check_sections(raw)
    method = raw.get("method", PipelineConfig.method)
    data = merge(preset_overrides(method, raw.get("dataset"), raw.get("ipc")), raw)
    cfg = config_from_dict(PipelineConfig, data)
    ecfg, dcfg = expert_config(cfg), distill_config(cfg)  # unknown keys fail now
    _check_challenge(cfg, dcfg)
    check_pipeline(cfg, ecfg, dcfg)
    return cfg


def _check_sections(raw: dict[str, Any]) -> None:
    """A shared key inside a stage section (``distill.zca``) is an error that names the fix."""
    for section in ("experts", "distill"):
        values = raw.get(section)
        for key in (k for k in SHARED_KEYS if isinstance(values, dict) and k in values):
            raise ConfigError(f"{section}.{key}: {key} is shared by every stage of a run; set it "
                              f"once at the top level of the config ({key}=...)")


def _context(cfg: PipelineConfig) -> dict[str, Any]:
    """The run context a stage config receives: the pipeline's, with the device resolved."""
    return fields_of(RunContext, cfg) | {"device": cfg.resolved_device()}


def expert_config(cfg: PipelineConfig) -> ExpertConfig:
    """The expert stage's config: the run context and the ``experts`` section."""
    return ExpertConfig(**_context(cfg), **fields_of(ExpertSection, cfg.experts))


def distill_config(cfg: PipelineConfig, expert_dir: str | None = None) -> DistillConfig:
    """The distillation stage's config: the run context, ``method``, ``ipc`` and the
    ``distill`` section; ``expert_dir`` fills ``distill.expert_dir`` when that is unset."""
    section = fields_of(DistillSection, cfg.distill)
    if section["expert_dir"] is None:
        section["expert_dir"] = expert_dir
    return DistillConfig(**_context(cfg), method=cfg.method, ipc=cfg.ipc, **section)


def _check_challenge(cfg: PipelineConfig, dcfg) -> None:
    """The challenge takes normalised pixels with labels implied by class order."""
    hard = dcfg.labels.label_mode == "hard"
    if "challenge" in cfg.evaluation.protocols and (cfg.zca or not hard):
        raise ConfigError("evaluation.protocols has 'challenge', which scores normalised pixels "
                          "with class-order hard labels: set zca=false and "
                          "distill.label_mode=hard (the mdatm preset does).")


def micro_batch_of(cfg) -> int | None:
    """``distill.micro_batch`` (None where the config has no such key)."""
    return getattr(getattr(cfg, "grad", None), "micro_batch", None)


def adjoint_keys(cfg) -> dict:
    """``distill.snapshots`` and ``kept_graphs`` ("memory" and 1 where the config has none)."""
    grad = getattr(cfg, "grad", None)
    return {"snapshots": getattr(grad, "snapshots", "memory"),
            "kept_graphs": getattr(grad, "kept_graphs", 1)}


def grad_mode_of(cfg) -> str:
    """``distill.grad_mode`` ("unrolled" where the config has no such key)."""
    return getattr(getattr(cfg, "grad", None), "grad_mode", "unrolled")
