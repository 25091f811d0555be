"""The unrolled student of trajectory matching (MTT, Cazenavette et al., CVPR 2022, Sec. 3.2).

Starting from an expert's parameters theta_0 = tau*_t (flat, (P,)), the student takes N SGD
steps on the synthetic set with the learnable step size alpha (MTT Eq. 2):

    theta_{i+1} = theta_i - alpha * grad_theta l(A(X_{b_i}), Y_{b_i}; theta_i),

keeping the graph of every step (``create_graph=True``) so that the matching loss can be
differentiated w.r.t. the images X, the step size alpha and (DATM) the soft labels Y.
Mini-batches b_i follow the official code: a fresh ``randperm`` of the N_syn indices split into
chunks of ``batch_syn`` that are popped from the end, a new permutation when none is left.
A is DSA, drawn per mini-batch. All randomness comes from the one ``generator`` passed in.

Example:
    >>> forward = student_forward(model)                                    # doctest: +SKIP
    >>> steps = StudentSteps(syn_steps=50, dsa=DSA())                       # doctest: +SKIP
    >>> theta_n = unroll_student(forward, theta0, images, labels, syn_lr, steps,
    ...                          generator=g)                                # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from datadistill.labels import LossFn, label_loss
from datadistill.models.convnet_kernels import convnet_plan
from datadistill.models.functional import functional_forward
from datadistill.models.winograd import FORWARD, kept_tiles

ForwardFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (theta (P,), x) -> logits


def student_forward(model: nn.Module, *, fast: bool = True) -> ForwardFn:
    """``forward(theta, x) -> logits`` of ``model`` with the flat parameters ``theta`` (P,).

    With ``fast`` a ConvNet (instance norm or none, ReLU, average pooling) uses the hand-written
    functional forward of :mod:`datadistill.models.convnet_kernels`; any other model uses the
    generic :func:`datadistill.models.functional.functional_forward`. Both are differentiable
    twice w.r.t. theta and x and give the same values (to rounding).

    Example:
        >>> forward = student_forward(create_model("convnet", 1, 10, 8, width=16))  # doctest: +SKIP
        >>> forward(theta, torch.zeros(4, 1, 8, 8)).shape                           # doctest: +SKIP
        torch.Size([4, 10])
    """
    plan = convnet_plan(model) if fast else None
    if plan is not None:
        return plan.forward

    def generic(theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return functional_forward(model, theta, x)

    return generic


class BatchSampler:
    """MTT's mini-batch order: chunks of a fresh randperm, popped from the end.

    Example:
        >>> s = BatchSampler(5, 2, torch.Generator().manual_seed(0))
        >>> [len(s.next()) for _ in range(4)]   # chunks of sizes 2, 2, 1 popped from the end
        [1, 2, 2, 1]
    """

    def __init__(self, n: int, batch: int | None, generator: torch.Generator | None) -> None:
        self.n, self.batch, self.generator = n, batch or n, generator
        self.chunks: list[torch.Tensor] = []

    def next(self) -> torch.Tensor:
        """(b,) int64 indices (CPU) of the next mini-batch."""
        if not self.chunks:
            perm = torch.randperm(self.n, generator=self.generator)
            self.chunks = list(torch.split(perm, self.batch))
        return self.chunks.pop()


@dataclass(frozen=True)
class StudentSteps:
    """How the student steps (MTT Eq. 2): ``syn_steps`` SGD steps, each on a mini-batch of
    ``batch_syn`` images (None = the whole set every step, MTT's default) augmented by ``dsa``
    (a :class:`datadistill.data.augment.DSA`, or None) and scored by ``loss_fn``
    (``(logits, labels) -> scalar``; None = :func:`label_loss` of the labels).

    Example:
        >>> StudentSteps(syn_steps=20, batch_syn=100).dsa is None
        True
    """

    syn_steps: int
    batch_syn: int | None = None
    dsa: Any = None
    loss_fn: LossFn | None = None


def unroll_student(forward: ForwardFn, theta0: torch.Tensor, images: torch.Tensor,
                   labels: torch.Tensor, syn_lr: torch.Tensor, steps: StudentSteps, *,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """theta_N after ``steps.syn_steps`` differentiable SGD steps from ``theta0`` on the
    synthetic set.

    Args:
        forward: ``(theta, x) -> logits`` (see :func:`student_forward`).
        theta0: (P,) start parameters (an expert checkpoint; treated as a constant).
        images: (N, C, H, W) synthetic images (usually ``requires_grad``).
        labels: (N,) int64 hard labels or (N, K) soft-label logits.
        syn_lr: scalar tensor, the learnable step size alpha.
        steps: the number of steps, mini-batch size, DSA and loss (:class:`StudentSteps`).
        generator: CPU generator for the permutations and the DSA draws.

    Returns:
        (P,) theta_N, attached to the graph of all steps.
    """
    loss_fn = steps.loss_fn or label_loss(labels)
    sampler = BatchSampler(images.shape[0], steps.batch_syn, generator)
    theta = theta0.detach().requires_grad_(True)  # a leaf: grad of step 0 needs it
    for _ in range(steps.syn_steps):
        idx = sampler.next().to(images.device)
        x, y = images[idx], labels[idx]  # (b, C, H, W), (b,) or (b, K)
        if steps.dsa is not None:
            x = steps.dsa(x, generator=generator)
        with kept_tiles(FORWARD):  # each x's tiles serve its weight gradient, then go
            ce = loss_fn(forward(theta, x), y)
            (grad,) = torch.autograd.grad(ce, theta, create_graph=True)  # (P,)
        theta = theta - syn_lr * grad
    return theta
