"""GSAM: surrogate-gap guided sharpness-aware minimisation, used by FTD to train flat experts.

FTD (Du et al., "Minimizing the Accumulated Trajectory Error to Improve Dataset Distillation",
CVPR 2023, section 4.1) trains the expert trajectories with GSAM (Zhuang et al., ICLR 2022)
wrapped around plain SGD (lr 0.01, momentum 0, weight decay 0) so that the trajectory is flat;
DATM and PAD reuse those experts. Research note trajectory-matching.md section 3.1.

One step = two forward/backward passes on the same batch (w: all parameters, flattened):

1. g = grad L(w); with ASAM weighting (``adaptive=True``, always on in FTD)
   n = || |w| * g ||_2, otherwise n = ||g||_2 (both over all parameters);
2. e = rho * g * w^2 / (n + eps) (adaptive) or e = rho * g / (n + eps); w <- w + e;
3. g_p = grad L(w + e);
4. cos = <g, g_p> / (||g|| ||g_p|| + eps) and v = g - cos * ||g|| * g_p / (||g_p|| + eps)
   (plain norms): the part of the first gradient orthogonal to g_p; the final gradient is
   g_p - alpha * v;
5. w <- w - e, then the base optimiser steps with the final gradient.

FTD keeps rho constant (its ProportionScheduler sits on a StepLR with gamma 1, so
rho_max = rho_min = 0.01); :class:`ProportionalRho` gives the schedule rho proportional to lr.

Example:
    >>> net = torch.nn.Linear(3, 2)
    >>> opt = GSAM(net.parameters(), torch.optim.SGD(net.parameters(), lr=0.01), rho=0.01)
    >>> x, y = torch.randn(4, 3), torch.tensor([0, 1, 0, 1])
    >>> def closure():
    ...     loss = torch.nn.functional.cross_entropy(net(x), y)
    ...     loss.backward()
    ...     return loss
    >>> loss = opt.step(closure)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from datadistill.errors import ConfigError


@dataclass(frozen=True)
class ProportionalRho:
    """rho_t proportional to the current lr (GSAM's ``ProportionScheduler``).

    rho = rho_min + (rho_max - rho_min) * (lr - lr_min) / (lr_max - lr_min); rho_max when
    lr_max == lr_min (FTD's constant setting).

    Example:
        >>> ProportionalRho(rho_max=0.04, rho_min=0.02, lr_max=0.1, lr_min=0.0)(0.05)
        0.03
    """

    rho_max: float
    rho_min: float
    lr_max: float
    lr_min: float = 0.0

    def __call__(self, lr: float) -> float:
        if self.lr_max <= self.lr_min:
            return self.rho_max
        frac = (lr - self.lr_min) / (self.lr_max - self.lr_min)
        return self.rho_min + (self.rho_max - self.rho_min) * frac


class GSAM:
    """GSAM wrapper around a base optimiser (FTD experts: SGD lr 0.01, momentum 0, wd 0).

    Args:
        params: the parameters to perturb; the same ones the base optimiser updates.
        base_optimizer: the optimiser that takes the final step (its lr schedulers attach to it).
        rho: perturbation radius, or a callable ``lr -> rho`` (e.g. :class:`ProportionalRho`)
            evaluated at the base optimiser's current lr (first param group) every step.
        alpha: weight of the orthogonal (surrogate-gap) component; FTD Table 7 uses 0.3 or 1,
            DATM/PAD 0.3.
        adaptive: ASAM weighting of the perturbation by w^2 (FTD: always True).
        eps: added to the norms in denominators (GSAM's ``perturb_eps``).
        model: optional module whose BatchNorm running statistics are frozen during the
            perturbed pass (GSAM's ``disable_running_stats``); irrelevant for instance norm.
    """

    def __init__(
        self,
        params: Iterable[nn.Parameter],
        base_optimizer: torch.optim.Optimizer,
        *,
        rho: float | Callable[[float], float] = 0.01,
        alpha: float = 0.3,
        adaptive: bool = True,
        eps: float = 1e-12,
        model: nn.Module | None = None,
    ) -> None:
        self.params = [p for p in params if p.requires_grad]
        if not self.params:
            raise ConfigError("GSAM got no trainable parameters; pass model.parameters().")
        if not callable(rho) and rho < 0:
            raise ConfigError(f"GSAM rho must be >= 0, got {rho}; FTD uses 0.01.")
        if alpha < 0:
            raise ConfigError(f"GSAM alpha must be >= 0, got {alpha}; FTD uses 0.3 or 1.")
        self.base_optimizer = base_optimizer
        self.rho = rho
        self.alpha = float(alpha)
        self.adaptive = bool(adaptive)
        self.eps = float(eps)
        self.model = model

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """The base optimiser's param groups (lr lives there)."""
        return self.base_optimizer.param_groups

    def current_rho(self) -> float:
        """rho for the next step (constant, or the schedule at the current lr)."""
        if callable(self.rho):
            return float(self.rho(float(self.param_groups[0]["lr"])))
        return float(self.rho)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradients (delegates to the base optimiser)."""
        self.base_optimizer.zero_grad(set_to_none=set_to_none)

    def _clear_grads(self) -> None:
        for p in self.params:
            p.grad = None

    def step(self, closure: Callable[[], Any]) -> Any:
        """One GSAM update; ``closure`` runs forward + ``backward()`` on one batch.

        The closure is called twice (at w and at w + e); gradients are cleared before each
        call, so it need not zero them. Returns what the first (unperturbed) call returned,
        e.g. the loss, so logged losses come from the unperturbed weights as in FTD.
        """
        self._clear_grads()
        with torch.enable_grad():
            first = closure()
        used = [p.grad is not None for p in self.params]  # unused params get no base step
        g = self._grads()  # list of tensors shaped like params; g at w
        e = self._perturbation(g, self.current_rho())
        with torch.no_grad():
            for p, e_p in zip(self.params, e, strict=True):
                p.add_(e_p)
        self._clear_grads()
        with _frozen_bn_stats(self.model), torch.enable_grad():
            closure()
        g_p = self._grads()  # gradient at w + e
        final = _decompose(g, g_p, self.alpha, self.eps)
        with torch.no_grad():
            for p, e_p, f, u in zip(self.params, e, final, used, strict=True):
                p.sub_(e_p)  # restore w before the base step
                p.grad = f if u else None
        self.base_optimizer.step()
        return first

    def _grads(self) -> list[torch.Tensor]:
        # Parameters without a gradient (unused in the forward) count as zero gradient.
        return [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
                for p in self.params]

    @torch.no_grad()
    def _perturbation(self, g: list[torch.Tensor], rho: float) -> list[torch.Tensor]:
        """e = rho * g * w^2 / (|| |w| g || + eps) (adaptive) or rho * g / (||g|| + eps)."""
        if self.adaptive:
            norm = _norm([p.abs() * gi for p, gi in zip(self.params, g, strict=True)])
            return [rho * gi * p.pow(2) / (norm + self.eps)
                    for p, gi in zip(self.params, g, strict=True)]
        norm = _norm(g)
        return [rho * gi / (norm + self.eps) for gi in g]

    def state_dict(self) -> dict[str, Any]:
        """Base optimiser state plus alpha (rho is a constructor argument, maybe callable)."""
        return {"base": self.base_optimizer.state_dict(), "alpha": self.alpha}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict`."""
        self.base_optimizer.load_state_dict(state["base"])
        self.alpha = float(state["alpha"])


def _norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """L2 norm of the concatenation of all tensors (a 0-dim tensor)."""
    return torch.stack([t.norm(p=2) for t in tensors]).norm(p=2)


@torch.no_grad()
def _decompose(g: list[torch.Tensor], g_p: list[torch.Tensor], alpha: float,
               eps: float) -> list[torch.Tensor]:
    """GSAM's final gradient g_p - alpha * v, v = g - cos * ||g|| * g_p / (||g_p|| + eps)."""
    inner = sum((a * b).sum() for a, b in zip(g, g_p, strict=True))
    norm_g, norm_p = _norm(g), _norm(g_p)
    cos = inner / (norm_g * norm_p + eps)
    return [b - alpha * (a - cos * norm_g * b / (norm_p + eps))
            for a, b in zip(g, g_p, strict=True)]


@contextmanager
def _frozen_bn_stats(model: nn.Module | None) -> Iterator[None]:
    """BatchNorm momentum 0 during the perturbed pass, so running statistics do not move."""
    saved = []
    if model is not None:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                saved.append((m, m.momentum))
                m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in saved:
            m.momentum = momentum
