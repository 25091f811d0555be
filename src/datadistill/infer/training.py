"""Small pieces shared by INFER's two training loops (teachers and students).

Example:
    >>> g = torch.Generator().manual_seed(0)
    >>> [len(b) for b in shuffled_batches(5, 2, g)]
    [2, 2]
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TypeVar

import torch

T = TypeVar("T")


def shuffled_batches(
    n: int, batch_size: int, generator: torch.Generator | None = None
) -> Iterator[torch.Tensor]:
    """Index batches of one shuffled epoch over ``n`` items (CPU int64 tensors).

    Like a shuffling DataLoader with ``drop_last=False``, except that a trailing batch of a
    single item is dropped: BatchNorm cannot compute training statistics from one sample
    when the last feature map is 1x1 (digits at 8 px).
    """
    order = torch.randperm(n, generator=generator)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        if len(idx) > 1 or n == 1:
            yield idx


def seeded(factory: Callable[[], T], seed: int) -> T:
    """Call ``factory`` (e.g. a model constructor) with torch's CPU RNG seeded to ``seed``,
    restoring the caller's global RNG state afterwards (no hidden global reseeding)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory()
