"""Hard and soft labels of a distilled set: the one place that tells them apart.

A set's labels are either ``(N,)`` int64 class indices (hard) or ``(N, K)`` float logits
(soft: DATM/PAD's learnable labels, INFER's stored ensemble logits). Every module asks
:func:`is_soft` and :func:`hard_labels` instead of testing shapes itself.

Example:
    >>> import torch
    >>> is_soft(torch.tensor([0, 2])), is_soft(torch.zeros(2, 3))
    (False, True)
    >>> hard_labels(torch.tensor([[0.1, 2.0], [3.0, -1.0]])).tolist()
    [1, 0]
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from datadistill.errors import ConfigError

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits, labels) -> scalar


def is_soft(labels: torch.Tensor) -> bool:
    """True for ``(N, K)`` float logits, False for ``(N,)`` class indices."""
    return labels.dim() == 2 and labels.is_floating_point()


def hard_labels(labels: torch.Tensor) -> torch.Tensor:
    """``(N,)`` class indices: the argmax over classes of soft logits, hard labels as given."""
    return labels.argmax(dim=1) if is_soft(labels) else labels


def label_loss(labels: torch.Tensor) -> LossFn:
    """Cross-entropy for hard labels (B,); DATM's soft cross-entropy for (B, K) logits."""
    if not is_soft(labels):
        return F.cross_entropy
    return soft_cross_entropy


def soft_cross_entropy(logits: torch.Tensor, target_logits: torch.Tensor) -> torch.Tensor:
    """DATM's SoftCrossEntropy: -sum(softmax(target) * log_softmax(logits)) / B.

    ``logits`` and ``target_logits`` are (B, K); gradients flow into both.

    Example:
        >>> float(soft_cross_entropy(torch.zeros(2, 4), torch.zeros(2, 4)))  # log 4
        1.3862943649291992
    """
    if logits.shape != target_logits.shape:
        raise ConfigError(f"soft_cross_entropy: logits {tuple(logits.shape)} and target logits "
                          f"{tuple(target_logits.shape)} must both be (B, K).")
    target = F.softmax(target_logits, dim=1)  # (B, K)
    return -(target * F.log_softmax(logits, dim=1)).sum() / logits.shape[0]
