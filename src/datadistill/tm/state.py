"""What the distillation loop carries: the run's fixed parts (:class:`Run`) and its one
mutable state object (:class:`Loop`), the checkpointed state together with the live
optimisers, random generators and image EMA whose states a checkpoint records."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from datadistill.matching.ema import ImageEMA
from datadistill.tm.checkpoint import DistillState
from datadistill.tm.config import DistillConfig


@dataclass
class Run:
    """Everything fixed for the run: data, experts, student, augmentation, output paths."""

    cfg: DistillConfig
    data: object  # RealData
    store: object  # ExpertStore
    model: torch.nn.Module
    forward: Callable
    dsa: object | None
    dsa_strategy: str | None
    out: Path
    num_experts: int


@dataclass
class Loop:
    """The loop's state: ``state`` (what a checkpoint saves: images, labels, step size, expert
    order, best so far) and the live objects whose states it saves with it."""

    state: DistillState
    optimizers: dict[str, torch.optim.Optimizer]  # images, syn_lr[, labels]
    generators: dict[str, torch.Generator]  # init, expert, window, student
    ema: ImageEMA | None  # FTD's image EMA; None without ema_decay
