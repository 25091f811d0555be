"""The normalised parameter-matching loss of MTT (Cazenavette et al., CVPR 2022, Eq. 3).

    L = ||theta_N - theta*_{t+M}||^2 / ||theta*_t - theta*_{t+M}||^2

theta_N is the student after N steps from the expert checkpoint theta*_t, theta*_{t+M} the
expert M epochs later. The official code divides numerator and denominator by the number of
parameters, which cancels. An optional mask over the flat vector restricts both sums to the
same entries (PAD's parameter selection, see :mod:`datadistill.matching.masks`).

Example:
    >>> t0, target = torch.zeros(3), torch.ones(3)
    >>> float(matching_loss(torch.full((3,), 0.5), t0, target))
    0.25
"""

from __future__ import annotations

import torch

from datadistill.errors import CompatibilityError


def matching_loss(theta_n: torch.Tensor, theta0: torch.Tensor, target: torch.Tensor,
                  mask: torch.Tensor | None = None) -> torch.Tensor:
    """Scalar loss; gradients flow through ``theta_n`` only (start and target are constants).

    Args:
        theta_n: (P,) student parameters after the unroll.
        theta0: (P,) start parameters theta*_t.
        target: (P,) expert parameters theta*_{t+M}.
        mask: None (all entries), a (P,) bool tensor (True = kept) or int64 indices of the kept
            entries; applied to numerator and denominator alike.
    """
    if not theta_n.shape == theta0.shape == target.shape:
        raise CompatibilityError(
            f"matching_loss: student {tuple(theta_n.shape)}, start {tuple(theta0.shape)} and "
            f"target {tuple(target.shape)} must be the same flat (P,) shape; were the experts "
            "trained for this model?")
    target = target.detach()
    num = (theta_n - target).square()  # (P,)
    den = (theta0.detach() - target).square()  # (P,)
    if mask is not None:
        num, den = num[mask], den[mask]
    return num.sum() / den.sum()
