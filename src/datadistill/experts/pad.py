"""PAD's expert stage: the difficulty order and the per-epoch curriculum hook of the experts.

PAD (Li, Guo et al., "Prioritize Alignment in Dataset Distillation", arXiv 2408.03360,
section 3.1) trains the experts on an easy-to-hard-to-easy-dropped schedule of the real data
(``buffer/buffer_CL.py``). This module joins the two components that implement it,
``difficulty`` (scores -> per-class easiest-first order) and ``curriculum`` (order + schedule
-> the indices of one epoch), into what :func:`datadistill.experts.train_experts` takes: an
``epoch_subset`` hook. Files written beside the experts (the store stays self-describing):

    <store>/difficulty.pt     the order used (save_difficulty format: indices, scores, meta)
    <store>/curriculum.json   schedule, where the order came from, a fingerprint of it, the
                              planned subset size of every epoch and the sizes actually served

Difficulty (research note trajectory-matching.md section 5.1): the paper names EL2N, the
official repository ships only GraNd-named index files and never computes scores. Default here:
EL2N (Paul et al., NeurIPS 2021) averaged over ``score_models`` networks of the experts'
architecture, each trained ``score_epochs`` epochs; ``score: grand`` gives DeepCore's last-layer
GraNd; ``difficulty_file`` imports an existing order (ours, or an official ``data_indices/*.pt``).

Several processes (``torchrun``): the scoring networks draw their seeds one after another from
one generator, so they are not independent per index; rank 0 scores alone and writes both
files while the other ranks wait, then read them. The experts themselves are sharded by
:func:`~datadistill.experts.train_experts`, and :func:`record_served` gathers every rank's
served sizes, so ``curriculum.json`` equals a single-process one.

Example:
    >>> cfg = PADCurriculum(score_models=2, score_epochs=1)                  # doctest: +SKIP
    >>> hook = prepare_curriculum(cfg, expert_cfg, data, "runs/pad/experts")  # doctest: +SKIP
    >>> store = train_experts(expert_cfg, data, "runs/pad/experts",
    ...                       epoch_subset=hook)                             # doctest: +SKIP
    >>> record_served(hook, "runs/pad/experts")                              # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from datadistill import distributed
from datadistill.data.augment import DSA
from datadistill.errors import CompatibilityError, ConfigError
from datadistill.experts.curriculum import CurriculumConfig, curriculum_subset
from datadistill.experts.difficulty import (
    BriefTraining,
    DifficultyOrder,
    difficulty_order,
    el2n_scores,
    grand_scores,
    load_difficulty,
    save_difficulty,
)
from datadistill.io import write_json
from datadistill.training import build_model, derive_seeds

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
DIFFICULTY_FILE = "difficulty.pt"
CURRICULUM_FILE = "curriculum.json"
SCORES = ("el2n", "grand")


@dataclass
class PADCurriculum:
    """The ``curriculum`` section of a pipeline config (PAD); absent/null = no curriculum."""

    # The official CIFAR-10 README schedule; the only one published (research note 5.2).
    schedule: CurriculumConfig = field(default_factory=CurriculumConfig)
    score: str = "el2n"  # el2n (PAD paper) | grand (the official index files' name, DeepCore)
    score_models: int = 10  # networks whose scores are averaged (DeepCore `repeat` = 10)
    score_epochs: int = 10  # brief training of each scoring network (SGD 0.01, momentum 0.9)
    difficulty_file: str | None = None  # an existing order to use instead of scoring

    def __post_init__(self) -> None:
        if self.score not in SCORES:
            raise ConfigError(f"curriculum.score must be one of {SCORES}, got {self.score!r}")
        if self.score_models < 1 or self.score_epochs < 0:
            raise ConfigError("curriculum.score_models must be >= 1 and score_epochs >= 0, got "
                              f"{self.score_models} and {self.score_epochs} (DeepCore: 10, 10).")


class CurriculumHook:
    """``epoch -> indices`` for :func:`train_experts`; remembers the subset sizes it served.

    Example:
        >>> order = DifficultyOrder([torch.arange(0, 8), torch.arange(8, 12)])
        >>> hook = CurriculumHook(order, CurriculumConfig())
        >>> len(hook(0)), hook.planned_sizes(1)
        (9, [9])
    """

    def __init__(self, order: DifficultyOrder, schedule: CurriculumConfig) -> None:
        self.order = order
        self.schedule = schedule
        self.served: dict[int, int] = {}  # epoch -> subset size handed to the trainer
        self.calls = 0

    def _subset(self, epoch: int) -> torch.Tensor:
        return curriculum_subset(self.order.indices, epoch, **self.schedule.schedule_kwargs())

    def __call__(self, epoch: int) -> torch.Tensor:
        idx = self._subset(epoch)  # (n_e,) int64, class-major; the trainer shuffles it
        self.served[epoch] = int(idx.numel())
        self.calls += 1
        return idx

    def planned_sizes(self, epochs: int) -> list[int]:
        """Subset size of every epoch 0..epochs-1 under the schedule."""
        return [int(self._subset(e).numel()) for e in range(epochs)]


def fingerprint(order: DifficultyOrder) -> str:
    """sha256 of the per-class index rows: two stores used the same order iff equal."""
    h = hashlib.sha256()
    for row in order.indices:
        h.update(row.to(torch.int64).contiguous().numpy().tobytes())
        h.update(b"|")
    return h.hexdigest()


def _scoring_meta(cfg: PADCurriculum, expert_cfg, data) -> dict[str, Any]:
    return {"score": cfg.score, "score_models": cfg.score_models,
            "score_epochs": cfg.score_epochs, "seed": expert_cfg.seed,
            "dataset": data.info.name, "model": expert_cfg.model,
            "model_kwargs": dict(expert_cfg.model_kwargs), "zca": expert_cfg.zca,
            "num_train": int(data.train.labels.numel())}


def compute_difficulty(cfg: PADCurriculum, expert_cfg, data, *, device: str = "cpu",
                       progress: bool = False) -> DifficultyOrder:
    """Score every training sample with networks of the experts' architecture and data space.

    The scoring nets see the same augmentation (DSA) as the experts; their seeds derive from
    ``expert_cfg.seed`` only, so the order is reproducible.
    """

    strategy = (expert_cfg.dsa_strategy or data.info.dsa_strategy) if expert_cfg.dsa else None
    seed = derive_seeds(expert_cfg.seed, 0x5AD, n=1)[0]
    scorer = el2n_scores if cfg.score == "el2n" else grand_scores
    images, labels = data.train.images, data.train.labels  # (N, C, H, W), (N,)
    training = BriefTraining(num_models=cfg.score_models, epochs=cfg.score_epochs,
                             batch_size=expert_cfg.batch_size,
                             augment=DSA(strategy) if strategy else None)
    scores = scorer(images, labels, model_fn=lambda: build_model(expert_cfg, data.info),
                    training=training, generator=torch.Generator().manual_seed(seed),
                    device=device, progress=progress)
    return difficulty_order(scores, labels.cpu(), data.info.num_classes,
                            meta=_scoring_meta(cfg, expert_cfg, data))


def load_or_compute_difficulty(cfg: PADCurriculum, expert_cfg, data, directory: str | Path, *,
                               device: str = "cpu", progress: bool = False) -> DifficultyOrder:
    """The order for this store: ``difficulty_file``, else ``<store>/difficulty.pt``, else
    freshly computed; validated against the training labels and saved beside the experts."""
    path = Path(directory) / DIFFICULTY_FILE
    labels = data.train.labels.cpu()
    if cfg.difficulty_file is not None:
        order = load_difficulty(cfg.difficulty_file)
        order.meta = {**order.meta, "source": str(cfg.difficulty_file)}
    elif path.is_file():
        order = load_difficulty(path)
        want = _scoring_meta(cfg, expert_cfg, data)
        have = {k: order.meta.get(k) for k in want}
        if have != want:
            raise CompatibilityError(
                f"{path} was scored with {have}, the config asks for {want}; delete the file "
                "to recompute it, or use another expert directory.")
        return _validated(order, labels, path)
    else:
        logger.info("scoring %d training samples (%s, %d networks x %d epochs)",
                    len(labels), cfg.score, cfg.score_models, cfg.score_epochs)
        order = compute_difficulty(cfg, expert_cfg, data, device=device, progress=progress)
    _validated(order, labels, cfg.difficulty_file or path)
    if distributed.is_main():
        save_difficulty(order, path)
    return order


def _validated(order: DifficultyOrder, labels: torch.Tensor, where) -> DifficultyOrder:
    try:
        order.validate(labels)
    except CompatibilityError as err:
        raise CompatibilityError(f"{where}: {err}") from None
    return order


def _has_experts(directory: Path) -> bool:
    return directory.is_dir() and any(directory.glob("expert_*.pt"))


def check_no_curriculum(directory: str | Path) -> None:
    """Refuse to add plain experts to a store that was trained with PAD's curriculum."""
    path = Path(directory) / CURRICULUM_FILE
    if path.is_file():
        raise CompatibilityError(f"{directory} holds experts trained with PAD's curriculum "
                                 f"({path}); use another expert directory for this method, or "
                                 "set the same `curriculum` section.")


def prepare_curriculum(cfg: PADCurriculum, expert_cfg, data, directory: str | Path, *,
                       device: str = "cpu", progress: bool = False) -> CurriculumHook:
    """The ``epoch_subset`` hook for the store ``directory``, after checking the store.

    Writes ``difficulty.pt`` and ``curriculum.json`` (with the planned per-epoch subset sizes)
    before any expert is trained; a store resumed with another schedule or order is refused.
    Under torchrun, rank 0 scores and writes them first; the other ranks then read them.
    """
    hook = None
    if distributed.is_main():
        hook = _prepare_curriculum(cfg, expert_cfg, data, directory, device=device,
                                   progress=progress)
    distributed.wait_for_others()  # difficulty.pt and curriculum.json are written
    if hook is None:
        hook = _prepare_curriculum(cfg, expert_cfg, data, directory, device=device,
                                   progress=progress)
    return hook


def _prepare_curriculum(cfg: PADCurriculum, expert_cfg, data, directory: str | Path, *,
                        device: str = "cpu", progress: bool = False) -> CurriculumHook:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    record_path = directory / CURRICULUM_FILE
    if _has_experts(directory) and not record_path.is_file():
        raise CompatibilityError(f"{directory} holds experts trained without PAD's curriculum; "
                                 "use another expert directory for PAD.")
    order = load_or_compute_difficulty(cfg, expert_cfg, data, directory, device=device,
                                       progress=progress)
    hook = CurriculumHook(order, cfg.schedule)
    record = {
        "format_version": FORMAT_VERSION, "kind": "pad_curriculum",
        "schedule": dataclasses.asdict(cfg.schedule),
        "difficulty": {**{k: v for k, v in dataclasses.asdict(cfg).items() if k != "schedule"},
                       "file": DIFFICULTY_FILE, "fingerprint": fingerprint(order)},
        "class_sizes": order.class_sizes, "epochs": expert_cfg.epochs,
        "epoch_sizes": hook.planned_sizes(expert_cfg.epochs),
    }
    if record_path.is_file():
        old = json.loads(record_path.read_text())
        keys = ("schedule", "difficulty", "class_sizes", "epochs")
        diff = [k for k in keys if old.get(k) != record[k]]
        if diff:
            raise CompatibilityError(f"{directory} was started with another curriculum "
                                     f"({', '.join(diff)} differ); use a new expert directory "
                                     "or the original settings.")
        record["served_epoch_sizes"] = old.get("served_epoch_sizes", {})
    if distributed.is_main():
        _write_json(record_path, record)
    return hook


def record_served(hook: CurriculumHook, directory: str | Path) -> dict:
    """Add the subset sizes the hook served (on every rank) to ``curriculum.json``; check they
    match the plan. Rank 0 writes and returns the record, other ranks get ``{}``."""
    path = Path(directory) / CURRICULUM_FILE
    shares = distributed.all_gather_objects((hook.served, hook.calls))  # every rank's experts
    if not distributed.is_main():
        return {}
    record = json.loads(path.read_text())
    served = {str(k): v for k, v in record.get("served_epoch_sizes", {}).items()}
    for share, _ in shares:
        served.update({str(e): n for e, n in sorted(share.items())})
    for e, n in served.items():
        if record["epoch_sizes"][int(e)] != n:  # would mean the hook and the plan disagree
            raise CompatibilityError(f"expert epoch {e} used {n} samples, the schedule in "
                                     f"{path} plans {record['epoch_sizes'][int(e)]}.")
    record["served_epoch_sizes"] = served
    record["epoch_subset_calls"] = (record.get("epoch_subset_calls", 0)
                                    + sum(calls for _, calls in shares))
    _write_json(path, record)
    return record


def _write_json(path: Path, obj: dict) -> None:
    write_json(obj, path)  # atomic: never a half-written record
