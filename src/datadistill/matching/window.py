"""Which part of an expert trajectory is matched: the start-epoch window.

MTT (Cazenavette et al., CVPR 2022, Sec. 3.2; ``np.random.randint(0, max_start_epoch)``) draws
the start epoch t uniformly from [0, T+), upper bound exclusive. DATM (Guo et al., ICLR 2024,
Sec. 4.1, "sequential generation") draws from [T-, Upper(it)) where the upper bound grows
linearly from T to T+ until iteration ``expansion_end``:

    Upper(it) = min(T+, T + int((T+ - T) * it / expansion_end)).

The expert must then have t + M epochs stored (checked by the distiller).

Example:
    >>> g = torch.Generator().manual_seed(0)
    >>> 0 <= sample_start_epoch(0, 2, g) < 2
    True
    >>> expanding_upper(500, current_max_start=10, max_start=20, expansion_end=1000)
    15
"""

from __future__ import annotations

import torch

from datadistill.config import check_choice
from datadistill.errors import ConfigError

WINDOWS = ("fixed", "expanding")


def sample_start_epoch(low: int, high: int, generator: torch.Generator | None) -> int:
    """A start epoch uniform in [low, high) (high exclusive, as numpy's randint)."""
    if high <= low:
        raise ConfigError(f"start-epoch window [{low}, {high}) is empty; set max_start_epoch > "
                          "min_start_epoch.")
    return int(torch.randint(low, high, (1,), generator=generator))


def expanding_upper(it: int, *, current_max_start: int, max_start: int,
                    expansion_end: int) -> int:
    """DATM's upper bound at iteration ``it``: T at it = 0, T+ from ``expansion_end`` on."""
    if expansion_end <= 0:
        return max_start
    grown = current_max_start + int((max_start - current_max_start) * it / expansion_end)
    return min(max_start, grown)


def window_bounds(kind: str, it: int, *, min_start: int, max_start: int,
                  current_max_start: int | None = None,
                  expansion_end: int | None = None) -> tuple[int, int]:
    """(low, high) of the start-epoch window at iteration ``it`` for window ``kind``."""
    if kind == "fixed":
        return min_start, max_start
    if kind == "expanding":
        if current_max_start is None or expansion_end is None:
            raise ConfigError("window 'expanding' needs current_max_start_epoch and "
                              "expansion_end (DATM defaults: 20 and 3000).")
        return min_start, expanding_upper(it, current_max_start=current_max_start,
                                          max_start=max_start, expansion_end=expansion_end)
    raise ConfigError(f"unknown window {kind!r}; choose one of {WINDOWS}.")


def check_window_config(kind: str, *, min_start: int, max_start: int,
                        current_max_start: int | None, expansion_end: int | None) -> None:
    """The window axis of a distillation config (``distill.window`` and its epochs).

    >>> check_window_config("fixed", min_start=0, max_start=2, current_max_start=None,
    ...                     expansion_end=None)
    """
    check_choice("distill.window", kind, WINDOWS)
    if min_start >= max_start:
        raise ConfigError(f"distill.min_start_epoch ({min_start}) must be below "
                          f"max_start_epoch ({max_start}).")
    if kind != "expanding":
        return
    if current_max_start is None or expansion_end is None:
        raise ConfigError("distill.window=expanding needs current_max_start_epoch and "
                          "expansion_end (DATM defaults: 20 and 3000).")
    if min_start >= current_max_start:
        raise ConfigError(f"distill.window=expanding starts with the empty window "
                          f"[min_start_epoch, current_max_start_epoch) = "
                          f"[{min_start}, {current_max_start}); raise "
                          "current_max_start_epoch above min_start_epoch.")
