"""PAD's parameter selection: which entries of the flat parameter vector enter the matching loss.

PAD (Li, Guo et al., "Prioritize Alignment in Dataset Distillation", arXiv 2408.03360,
section 3.2) restricts the normalised trajectory-matching loss to a subset K of the P entries,
with the same K in numerator and denominator:

    L = sum_{k in K} (theta_N - theta*)_k^2 / sum_{k in K} (theta_0 - theta*)_k^2.

Two versions exist in the official history (research note trajectory-matching.md section 5.3):

- depth (``distill/PAD_depth.py``): drop the first int(ratio * P) entries of the flat vector,
  i.e. the shallowest parameters by count (flat order = ``model.parameters()`` order);
- loss (``distill/PAD.py`` at HEAD): drop the int(ratio * P) entries with the smallest current
  squared error (theta_N - theta*)^2 and keep the worst aligned; recomputed every iteration.
  The official sort is not stable; ours is (ties dropped in index order), so runs repeat.

A mask is a BoolTensor (P,), True = kept. ratio 0 keeps everything.

Example:
    >>> depth_mask(5, 0.4).tolist()
    [False, False, True, True, True]
    >>> loss_mask(torch.tensor([0.3, 0.1, 0.2, 0.5]), 0.5).tolist()
    [True, False, False, True]
"""

from __future__ import annotations

import torch

from datadistill.config import check_choice
from datadistill.errors import ConfigError

MASK_KINDS = ("none", "depth", "loss")


def num_dropped(numel: int, ratio: float) -> int:
    """int(ratio * P) entries are dropped (the official truncation)."""
    if not 0.0 <= ratio < 1.0:
        raise ConfigError(f"parameter mask ratio must be in [0, 1), got {ratio}; PAD uses "
                          "0, 0.25 or 0.5.")
    return int(ratio * numel)


def depth_mask(numel: int, ratio: float, device: str | torch.device = "cpu") -> torch.Tensor:
    """(P,) bool: False for the first int(ratio * P) entries (shallowest parameters)."""
    mask = torch.ones(numel, dtype=torch.bool, device=device)
    mask[:num_dropped(numel, ratio)] = False
    return mask


def loss_mask(sq_err: torch.Tensor, ratio: float) -> torch.Tensor:
    """(P,) bool: False for the int(ratio * P) entries with the smallest squared error.

    ``sq_err`` is the current per-entry (theta_N - theta*)^2, shape (P,); it is detached, the
    mask carries no gradient. Ties are broken by index (stable sort), lower index dropped first.
    """
    if sq_err.dim() != 1:
        raise ConfigError(f"loss_mask needs a flat (P,) squared error, got {tuple(sq_err.shape)}.")
    k = num_dropped(sq_err.numel(), ratio)
    mask = torch.ones(sq_err.numel(), dtype=torch.bool, device=sq_err.device)
    if k:
        order = torch.sort(sq_err.detach(), stable=True).indices  # ascending error
        mask[order[:k]] = False
    return mask


def param_mask(kind: str, ratio: float, *, numel: int,
               sq_err: torch.Tensor | None = None,
               device: str | torch.device = "cpu") -> torch.Tensor | None:
    """Dispatch on the preset's ``param_mask`` kind; None means "all parameters".

    Example:
        >>> param_mask("none", 0.0, numel=4) is None
        True
    """
    if kind not in MASK_KINDS:
        raise ConfigError(f"unknown param_mask {kind!r}; choose one of {MASK_KINDS}.")
    if kind == "none" or num_dropped(numel, ratio) == 0:
        return None
    if kind == "depth":
        return depth_mask(numel, ratio, device)
    if sq_err is None:
        raise ConfigError("param_mask 'loss' needs the current squared error (theta_N - "
                          "theta*)^2; pass sq_err.")
    return loss_mask(sq_err, ratio)


def check_mask_config(kind: str) -> None:
    """The mask axis of a distillation config (``distill.param_mask``).

    >>> check_mask_config("depth")
    """
    check_choice("distill.param_mask", kind, MASK_KINDS)
