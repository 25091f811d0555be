"""DD-Ranking's evaluation protocol: HLR, IOR, LRS and ARS of a distilled set, per round.

DD-Ranking (Li et al., "DD-Ranking: Rethinking the Evaluation of Dataset Distillation", arXiv
2505.13300; code `NUS-HPC-AI-Lab/DD-Ranking` v0.2.0, per-method configs on its ``eval``
branch) scores a distilled set against two references trained the same way. Each round:

1. the set with hard labels: the set's lr (hard-label methods) or the best lr of the grid
   (soft-label methods, labels by class order, augmentation if ``aug_for_hard``);
2. the set with its own labels (soft-label methods: stored logits, mode ``S``, or the
   teachers' logits on every batch, mode ``M``), with the set's lr;
3. a fresh class-balanced random subset of the training set with the same label type
   (soft-label methods: the teacher's logits, computed once in mode ``S``), its lr searched
   over ``{0.001, 0.005, 0.01, 0.05, 0.1}`` (the best test accuracy wins);
4. the full training set with hard labels (DD-Ranking's real-data config: SGD lr 0.01,
   StepLR 100, 200 epochs, at its loader's batch 256), without augmentation except in DATM's
   config (``use_aug_for_hard``: DSA), unless ``full_accuracy`` is given or DD-Ranking uses a
   cached accuracy for the dataset and model (:data:`FULL_ACCURACY_CACHE`);
5. for ARS, steps 2 and 3 again without augmentation.

Every training reports the best of its periodic tests (``curve.best``). Then
``HLR = full - syn_hard``, ``IOR = syn - random``, ``LRS = N(w IOR - (1-w) HLR)``,
``ARS = N(g (syn - random) + (1-g) (syn_noaug - random_noaug))`` with
``N(a) = (e^a - e^-1) / (e - e^-1)`` (:mod:`.scores`), and mean +- std over rounds.

Where DD-Ranking's code departs from its paper we follow the paper (README, "DD-Ranking
protocol: deviations"): accuracies are fractions (the code feeds percentages into ``exp``);
mixup/cutmix mix the labels too (:mod:`.ddranking_train`); LRS is recorded once
per round (the hard-label code appends it twice); the full-data reference trains for its own
epoch count (the code loops the distilled set's epoch count over a 200-epoch schedule).

Example:
    >>> cfg = preset_for("mtt")
    >>> report = score(ds.images, ds.labels, real, cfg, syn_lr=ds.lr)      # doctest: +SKIP
    >>> report.summary["lrs"]                                             # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from datadistill import distributed
from datadistill.data import random_subset
from datadistill.errors import CompatibilityError, ConfigError
from datadistill.evaluation.classic import build_network, check_inputs, with_options
from datadistill.evaluation.ddranking_config import (  # noqa: F401  re-exported
    FULL_ACCURACY_CACHE,
    HARD_LABEL_VARIANTS,
    METHOD_PRESETS,
    PRESETS,
    SETTINGS,
    SETTINGS_FILE,
    DDRankingConfig,
    class_order_labels,
    full_accuracy_for,
    hard_labels_for,
    preset_for,
)
from datadistill.evaluation.ddranking_train import Curve, TrainSpec, teacher_logits, train_spec
from datadistill.evaluation.scores import (
    augmentation_robust_score,
    hard_label_recovery,
    improvement_over_random,
    label_robust_score,
)
from datadistill.runs import Show, run_all
from datadistill.runtime.progress import plural
from datadistill.training import derive_seeds

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


# ----------------------------------------------------------------------------- lr search


@dataclass
class Training:
    """One reported training: its lr, best-of-periodic and last test accuracy (fractions).

    `lr_search` maps each lr of the grid to its best accuracy when the lr was searched.
    """

    lr: float
    best: float
    last: float
    tested_epochs: list[int]
    accuracies: list[float]
    lr_search: dict[str, float] | None = None

    @classmethod
    def from_curve(cls, lr: float, curve: Curve, search: dict | None = None) -> Training:
        return cls(lr, curve.best, curve.last, curve.epochs, curve.accuracies, search)


def search_lr(train_at: Any, grid: Sequence[float]) -> Training:
    """Train once per lr of `grid` (``train_at(lr) -> Curve``); keep the best test accuracy.

    Ties keep the first (smaller) lr, as DD-Ranking's strict ``>`` does.

    Example:
        >>> search_lr(lambda lr: Curve([1], [0.5 + lr]), (0.01, 0.1)).lr
        0.1
    """
    best: Training | None = None
    found: dict[str, float] = {}
    for lr in grid:
        curve = train_at(lr)
        found[repr(float(lr))] = curve.best
        if best is None or curve.best > best.best:
            best = Training.from_curve(float(lr), curve)
    assert best is not None  # grid is non-empty (checked by the config)
    best.lr_search = found
    return best


# ----------------------------------------------------------------------------- the runner

# One seed stream per (round, role): the same init and batches for every lr of a search.
ROLES = {"syn_hard": 0, "syn": 1, "random": 2, "full": 3, "syn_noaug": 4, "random_noaug": 5,
         "subset": 6, "teacher": 7}  # fmt: skip


def _seeds(seed: int, round_: int, role: str) -> tuple[int, int]:
    init_seed, train_seed = derive_seeds(seed, round_, ROLES[role], 13)
    return init_seed, train_seed


@dataclass
class _Runner:
    real: Any  # RealData: train and test in the set's space
    cfg: DDRankingConfig
    seed: int
    device: str | torch.device
    teachers: Sequence[nn.Module] = ()

    def train(self, x, y, spec: TrainSpec, lr: float, round_: int, role: str, *,
              augment: bool = True, mode_m: bool = False) -> Curve:  # fmt: skip
        init_seed, train_seed = _seeds(self.seed, round_, role)
        net = build_network(self.cfg.model, self.real.info, init_seed, self.cfg.model_kwargs)
        teachers = self.teachers if mode_m else ()
        curve = train_spec(net, x, y, self.real.test, replace(spec, lr=lr), seed=train_seed,
                    augment=augment, teachers=teachers, device=self.device)
        log.info("round %d %s lr %g: best %.4f last %.4f", round_, role, lr, curve.best,
                 curve.last)
        return curve

    def run(self, x, y, spec, round_, role, lr: float | None, **kw) -> Training:
        """A training at `lr`, or the lr search of the config's grid when lr is None."""
        if lr is not None:
            return Training.from_curve(lr, self.train(x, y, spec, lr, round_, role, **kw))
        return search_lr(lambda r: self.train(x, y, spec, r, round_, role, **kw),
                         self.cfg.lr_grid)


def _train_full(real: Any, cfg: DDRankingConfig, seed: int, round_: int, role: str,
                device: str | torch.device) -> tuple[nn.Module, Curve]:
    """`cfg.model` trained on the full training set with ``cfg.full``: the reference with
    its augmentation (none, or DSA for DATM's config), a teacher without."""
    init_seed, train_seed = _seeds(seed, round_, role)
    net = build_network(cfg.model, real.info, init_seed, cfg.model_kwargs)
    augment = role == "full" and cfg.full.augment != "none"
    curve = train_spec(net, real.train.images, real.train.labels, real.test, cfg.full,
                       seed=train_seed, augment=augment, device=device)
    log.info("full data (%s): best %.4f last %.4f", role, curve.best, curve.last)
    return net, curve


def train_teacher(real: Any, cfg: DDRankingConfig, *, seed: int = 0,
                  device: str | torch.device = "cpu") -> nn.Module:
    """A teacher for soft-label scoring when the user supplies none: `cfg.model` trained on
    the full training set with the full-data recipe (``cfg.full``, no augmentation).

    Example:
        >>> teacher = train_teacher(real, preset_for("datm"), seed=0)      # doctest: +SKIP
    """
    return _train_full(real, cfg, seed, 0, "teacher", device)[0].eval()


def full_reference(real: Any, cfg: DDRankingConfig, *, seed: int = 0, round_: int = 0,
                   device: str | torch.device = "cpu") -> Training:
    """The full-data hard-label reference of one round (step 4), as :func:`score` trains it.

    Its ``best`` can be passed as ``cfg.full_accuracy`` to reuse one reference across rounds
    (DD-Ranking's cached full-data accuracy).

    Example:
        >>> full_reference(real, preset_for("mtt")).best                    # doctest: +SKIP
    """
    return Training.from_curve(cfg.full.lr, _train_full(real, cfg, seed, round_, "full", device)[1])


@torch.no_grad()
def teacher_labels(teachers: Sequence[nn.Module], images: torch.Tensor,
                   batch_size: int = 256) -> torch.Tensor:
    """Mode S soft labels: the teachers' mean logits (N, K) on un-augmented images."""
    device = next(teachers[0].parameters()).device
    out = [teacher_logits(teachers, xb.to(device)).cpu() for xb in images.split(batch_size)]
    return torch.cat(out)


# ----------------------------------------------------------------------------- one round


def _round(run: _Runner, x, labels, syn_lr: float | None, r: int) -> dict[str, Any]:
    """Trainings and scores of round `r` (see the module docstring for the steps)."""
    cfg, real = run.cfg, run.real
    k = real.info.num_classes
    spec, soft, mode_m = cfg.train, cfg.labels == "soft", cfg.soft_label_mode == "M"
    out: dict[str, Any] = {}
    hard = hard_labels_for(labels, k, cfg.hard_label_variant)
    if soft:  # DD-Ranking searches the lr of the set's hard-label training
        out["syn_hard"] = run.run(x, hard, spec, r, "syn_hard", None, augment=cfg.aug_for_hard)
        syn_y = hard if mode_m else labels  # mode M: the teachers label every batch
        out["syn"] = run.run(x, syn_y, spec, r, "syn", syn_lr, mode_m=mode_m)
    else:
        out["syn"] = out["syn_hard"] = run.run(x, hard, spec, r, "syn", syn_lr)
    gen = torch.Generator().manual_seed(_seeds(run.seed, r, "subset")[0])
    rx, ry = random_subset(real.train, x.shape[0] // k, gen)
    if soft and not mode_m:  # the random subset gets the same kind of labels: the teacher's
        ry = teacher_labels(run.teachers, rx).to(rx.device)
    out["random_labels"] = "teacher soft labels" if soft else "hard labels"
    out["random"] = run.run(rx, ry, spec, r, "random", None, mode_m=soft and mode_m)
    if cfg.full_accuracy is None:
        out["full"] = full_reference(real, cfg, seed=run.seed, round_=r, device=run.device)
    if cfg.ars:
        out["syn_noaug"] = run.run(x, syn_y if soft else hard, spec, r, "syn_noaug", syn_lr,
                                   augment=False, mode_m=soft and mode_m)
        out["random_noaug"] = run.run(rx, ry, spec, r, "random_noaug", None, augment=False,
                                      mode_m=soft and mode_m)
    out.update(_scores(cfg, out))
    return out


def _scores(cfg: DDRankingConfig, t: dict[str, Any]) -> dict[str, float]:
    full = cfg.full_accuracy if cfg.full_accuracy is not None else t["full"].best
    scores = {
        "hlr": hard_label_recovery(full, t["syn_hard"].best),
        "ior": improvement_over_random(t["syn"].best, t["random"].best),
    }
    scores["lrs"] = label_robust_score(scores["hlr"], scores["ior"], cfg.lrs_weight)
    if cfg.ars:
        scores["ars"] = augmentation_robust_score(
            t["syn"].best, t["random"].best, t["syn_noaug"].best, t["random_noaug"].best,
            cfg.ars_weight,
        )
    return scores


# ----------------------------------------------------------------------------- report


@dataclass
class DDRankingReport:
    """Per-round trainings and scores, and their mean +- std (ddof 0, as DD-Ranking)."""

    rounds: list[dict[str, Any]]
    summary: dict[str, dict[str, float]]
    settings: dict[str, Any]
    protocol: str = "ddranking"
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        def plain(v: Any) -> Any:
            return dataclasses.asdict(v) if isinstance(v, Training) else v

        out = dataclasses.asdict(self)
        out["rounds"] = [{k: plain(v) for k, v in r.items()} for r in self.rounds]
        return out

    def __str__(self) -> str:
        parts = [f"{name.upper()} {100 * s['mean']:.2f} ± {100 * s['std']:.2f}"
                 for name, s in self.summary.items() if name in ("hlr", "ior", "lrs", "ars")]
        return (f"DD-Ranking over {plural(len(self.rounds), 'round')}: " + ", ".join(parts)
                + " (%)")


def _summary(rounds: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for key, value in rounds[0].items():
        if isinstance(value, Training) or isinstance(value, float):
            vals = [r[key].best if isinstance(r[key], Training) else r[key] for r in rounds]
            out[key] = {"mean": float(np.mean(vals)), "std": float(np.std(vals)),
                        "values": [float(v) for v in vals]}
    return out


def _check(images: torch.Tensor, labels: torch.Tensor, real: Any, cfg: DDRankingConfig,
           teachers: Sequence[nn.Module]) -> None:
    check_inputs(images, labels, real.test)
    k = real.info.num_classes
    if images.shape[0] % k:
        raise CompatibilityError(
            f"{images.shape[0]} images for {k} classes: the random subset needs a whole number "
            "of images per class; score a class-balanced set"
        )
    if cfg.labels == "soft" and cfg.soft_label_mode == "S" and labels.dim() != 2:
        raise ConfigError("labels='soft' in mode S needs (N, K) soft labels; give the set's "
                          "logits, use soft_label_mode='M' with teachers, or labels='hard'")
    if teachers and cfg.labels != "soft":
        log.warning("teachers are ignored: hard-label scoring uses none")


@dataclass(frozen=True)
class ScoreOptions:
    """How :func:`score` runs: the set's lr, the teachers, seed, device and callbacks."""

    syn_lr: float | None = None  # None: searched over the grid
    teachers: Sequence[nn.Module] | nn.Module | None = None
    seed: int = 0
    device: str | torch.device = "cpu"
    progress: bool = False
    on_round: Any = None  # on_round(r, report_so_far) after each round


def score(images: torch.Tensor, labels: torch.Tensor, real: Any,
          cfg: DDRankingConfig | None = None, options: ScoreOptions | None = None,
          **overrides: Any) -> DDRankingReport:
    """Score a distilled set with DD-Ranking's protocol (see the module docstring).

    `options` is a :class:`ScoreOptions`; its fields may also be given as keywords
    (``syn_lr``, ``teachers``, ``seed``, ``device``, ``progress``, ``on_round``).
    ``on_round(r, report_so_far)`` is called after each round (e.g. to save partial results).

    `real` is the prepared dataset (``datadistill.data.prepare``) in the set's image space;
    `syn_lr` the set's learned lr (None: searched over the grid, as DD-Ranking does when the
    method has none). Soft-label configs need `teachers` (one model or several, the mean of
    their logits) or train one on the full data (:func:`train_teacher`).

    Example:
        >>> report = score(ds.images, ds.labels, prepare("mnist"), preset_for("mtt"),
        ...                syn_lr=ds.lr)                                    # doctest: +SKIP
        >>> print(report)                                                   # doctest: +SKIP
    """
    o = with_options(ScoreOptions, options, overrides, "score")
    syn_lr, teachers, seed, device = o.syn_lr, o.teachers, o.seed, o.device
    cfg = cfg or DDRankingConfig()
    full_accuracy, full_source = full_accuracy_for(cfg, real.info.name)
    cfg = replace(cfg, full_accuracy=full_accuracy)
    if isinstance(teachers, nn.Module):
        teachers = [teachers]
    teachers = list(teachers or [])
    _check(images, labels, real, cfg, teachers)
    supplied = bool(teachers) and cfg.labels == "soft"
    real = replace(real, train=real.train.to(device), test=real.test.to(device))
    if cfg.labels == "soft" and not teachers:
        teachers = [train_teacher(real, cfg, seed=seed, device=device)]
    teachers = [t.to(device).eval() for t in teachers]
    run = _Runner(real, cfg, seed, device, teachers)
    x, y = images.detach().to(device), labels.detach().to(device)
    settings = {"config": _plain_config(cfg), "syn_lr": syn_lr, "seed": seed,
                "device": str(device), **distributed.metadata(), "dataset": real.info.name,
                "space": real.test.space,
                "n_images": int(images.shape[0]), "teachers": len(teachers),
                "full_accuracy_source": full_source,
                "teacher": ("supplied" if supplied else "trained on the full data (cfg.full)")
                if cfg.labels == "soft" else None}

    def saved(r: int, rounds: list[dict[str, Any]]) -> None:
        o.on_round(r, DDRankingReport(rounds, _summary(rounds), settings))

    # Round r depends on (seed, r) only (its seeds come from _seeds).
    rounds = run_all(cfg.rounds, lambda rr: _round(run, x, y, syn_lr, rr.index), seed=seed,
                     show=Show(o.progress, "ddranking"),
                     after_run=None if o.on_round is None else saved).values
    return DDRankingReport(rounds, _summary(rounds), settings)


def _plain_config(cfg: DDRankingConfig) -> dict[str, Any]:
    out = dataclasses.asdict(cfg)
    out["lr_grid"] = list(cfg.lr_grid)
    return out
