"""INFER's labels: teacher-ensemble logits, mixup of instances and logits, and the KD loss.

INFER (Zhang et al., ICLR 2025, Sec. 3.3; official ``ufc_validation/val_static.py``):

- static labelling: the soft label of an instance is the mean of the M teachers' logits on
  it, computed once (teachers in eval mode, no augmentation) and stored, one C-vector per
  instance;
- during student training, mixup with one lambda ~ Beta(0.8, 0.8) per batch and a random
  permutation pi mixes the images AND linearly interpolates the stored logits,
  z = lambda z_i + (1 - lambda) z_pi(i), before the temperature softmax;
- dynamic labelling (``val_dyn.py``) instead queries the teachers on every augmented, mixed
  batch;
- loss: KL(softmax(z / T) || softmax(s / T)) with ``batchmean`` reduction, T = 30, no T^2.

Example:
    >>> s, t = torch.zeros(2, 3), torch.tensor([[3.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    >>> float(kd_loss(s, t, temperature=1.0)) > 0
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import scipy.special
import torch
import torch.nn.functional as F
from torch import nn

from datadistill.runtime.progress import progress_bar


@torch.no_grad()
def ensemble_logits(
    teachers: list[nn.Module], x: torch.Tensor, batch_size: int = 256, progress: bool = False
) -> torch.Tensor:
    """Mean of the teachers' logits on x (N, C, H, W) -> (N, K), on x's device.

    Teachers are used in eval mode (running BN statistics), as INFER does for its labels.
    ``progress`` shows a bar with the time estimate (ImageNet: 36,000+ instances).
    """
    device = next(teachers[0].parameters()).device
    out = []
    starts = range(0, x.shape[0], batch_size)
    for start in progress_bar(starts, desc="teacher labels", enabled=progress, stage=True,
                              leave=False):  # a terminal bar, else one line at the end
        xb = x[start : start + batch_size].to(device)  # (B, C, H, W)
        logits = torch.stack([t.eval()(xb) for t in teachers])  # (M, B, K)
        out.append(logits.mean(0).to(x.device))
    return torch.cat(out)


@dataclass
class Mixup:
    """One mixup draw for a batch: ``lam`` and the partner permutation ``perm`` (B,)."""

    lam: float
    perm: torch.Tensor

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """lam * x + (1 - lam) * x[perm]; works for images (B, C, H, W) and logits (B, K)."""
        return self.lam * x + (1.0 - self.lam) * x[self.perm.to(x.device)]


def sample_mixup(n: int, alpha: float, generator: torch.Generator | None = None) -> Mixup:
    """lambda ~ Beta(alpha, alpha) (by inverse CDF of one uniform from ``generator``) and a
    random permutation of n.

    Example:
        >>> m = sample_mixup(4, 0.8, torch.Generator().manual_seed(0))
        >>> 0.0 <= m.lam <= 1.0, sorted(m.perm.tolist())
        (True, [0, 1, 2, 3])
    """
    uniform = torch.rand((), generator=generator, dtype=torch.float64).item()
    lam = float(scipy.special.betaincinv(alpha, alpha, uniform))
    return Mixup(lam=lam, perm=torch.randperm(n, generator=generator))


def kd_loss(
    student_logits: torch.Tensor, target_logits: torch.Tensor, temperature: float = 30.0
) -> torch.Tensor:
    """KLDiv(log_softmax(s / T), softmax(t / T)) with batchmean reduction and no T^2 factor.

    student_logits, target_logits: (B, K). This is INFER's (and SRe2L's) distillation loss.
    """
    log_p = F.log_softmax(student_logits / temperature, dim=1)
    q = F.softmax(target_logits / temperature, dim=1)
    return F.kl_div(log_p, q, reduction="batchmean")
