"""PAD's data scheduler for expert training: which real samples each expert epoch sees.

PAD (Li, Guo et al., "Prioritize Alignment in Dataset Distillation", arXiv 2408.03360,
section 3.1, "data selection") trains the experts on a per-epoch subset chosen by difficulty
(``buffer/buffer_CL.py`` + ``utils/utils_cl_scheduler.py``). With n_c samples of class c sorted
easiest first and e the 0-based expert epoch (research note trajectory-matching.md section 5.2):

- e <= add_end_epoch: p = min(1, init_ratio + (1 - init_ratio) * e / add_end_epoch), keep the
  easiest int(p * n_c) of each class (hard samples are added linearly);
- add_end_epoch < e <= rm_epoch_first: all samples;
- rm_epoch_first < e <= rm_epoch_second: drop the easiest int(rm_easy_ratio_first * n_c);
- e > rm_epoch_second: drop the easiest int(rm_easy_ratio_second * n_c).

Fix against the official code: it hard-codes ``data_size_by_class = 5000`` (CIFAR-10), so on
CIFAR-100 / Tiny ImageNet (500 per class) every "add" phase keeps all data and every "remove"
phase keeps nothing. Here n_c is taken per class from the data, so unequal class sizes work too.
``int()`` truncation is kept as in the official code (it equals floor for these non-negative
values).

Example:
    >>> order = [torch.arange(0, 8), torch.arange(8, 12)]   # class 0: 8 samples, class 1: 4
    >>> cfg = CurriculumConfig()
    >>> curriculum_subset(order, 0, **cfg.schedule_kwargs()).tolist()
    [0, 1, 2, 3, 4, 5, 8, 9, 10]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from datadistill.errors import ConfigError


@dataclass(frozen=True)
class CurriculumConfig:
    """PAD scheduler settings; defaults are the official CIFAR-10 README command."""

    init_ratio: float = 0.75  # fraction of each class (easiest first) used at epoch 0
    add_end_epoch: int = 20  # last epoch of the linear "add hard samples" phase; all data after
    rm_epoch_first: int = 40  # after this epoch, drop the easiest rm_easy_ratio_first per class
    rm_epoch_second: int = 60  # after this epoch, drop the easiest rm_easy_ratio_second per class
    rm_easy_ratio_first: float = 0.1  # fraction of each class removed in (first, second]
    rm_easy_ratio_second: float = 0.2  # fraction of each class removed after rm_epoch_second

    def __post_init__(self) -> None:
        for name in ("init_ratio", "rm_easy_ratio_first", "rm_easy_ratio_second"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"curriculum {name}={value} must be in [0, 1].")
        if self.init_ratio <= 0.0:
            raise ConfigError("curriculum init_ratio must be > 0, or the first epoch has no data.")
        if not 0 <= self.add_end_epoch <= self.rm_epoch_first <= self.rm_epoch_second:
            raise ConfigError(
                "curriculum epochs must satisfy 0 <= add_end_epoch <= rm_epoch_first <= "
                f"rm_epoch_second, got {self.add_end_epoch}, {self.rm_epoch_first}, "
                f"{self.rm_epoch_second}."
            )

    def schedule_kwargs(self) -> dict[str, float | int]:
        """The fields as keyword arguments of :func:`curriculum_subset`."""
        return asdict(self)


def kept_range(n: int, epoch: int, *, init_ratio: float, add_end_epoch: int,
               rm_epoch_first: int, rm_epoch_second: int, rm_easy_ratio_first: float,
               rm_easy_ratio_second: float) -> tuple[int, int]:
    """[start, stop) of the easiest-first order of one class of size n used at ``epoch``.

    Example:
        >>> kept_range(500, 61, **CurriculumConfig().schedule_kwargs())
        (100, 500)
    """
    if epoch <= add_end_epoch:
        # add_end_epoch == 0 means no "add" phase: epoch 0 already uses all data.
        p = 1.0 if add_end_epoch == 0 else min(
            1.0, init_ratio + (1.0 - init_ratio) * epoch / add_end_epoch)
        return 0, int(p * n)
    if epoch <= rm_epoch_first:
        return 0, n
    if epoch <= rm_epoch_second:
        return int(rm_easy_ratio_first * n), n
    return int(rm_easy_ratio_second * n), n


def curriculum_subset(sorted_per_class: Sequence[torch.Tensor], epoch: int, *,
                      init_ratio: float, add_end_epoch: int, rm_epoch_first: int,
                      rm_epoch_second: int, rm_easy_ratio_first: float,
                      rm_easy_ratio_second: float) -> torch.Tensor:
    """Dataset indices (int64, class-major) to train on at 0-based expert ``epoch``.

    ``sorted_per_class[c]`` holds the dataset indices of class c, easiest first (see
    ``datadistill.experts.difficulty``); classes may have different sizes. The caller shuffles
    (the official code builds a shuffled DataLoader over the subset each epoch).
    """
    if epoch < 0:
        raise ConfigError(f"curriculum epoch must be >= 0, got {epoch}.")
    kwargs = dict(init_ratio=init_ratio, add_end_epoch=add_end_epoch,
                  rm_epoch_first=rm_epoch_first, rm_epoch_second=rm_epoch_second,
                  rm_easy_ratio_first=rm_easy_ratio_first,
                  rm_easy_ratio_second=rm_easy_ratio_second)
    parts = []
    for order in sorted_per_class:  # order: (n_c,) int64
        start, stop = kept_range(int(order.numel()), epoch, **kwargs)
        parts.append(order[start:stop].long())
    if not parts:
        return torch.zeros(0, dtype=torch.long)
    return torch.cat(parts)
