"""Universal (inter-class) feature compensators, INFER's distillation step.

INFER (Zhang et al., ICLR 2025, Sec. 3.2, Eq. 4-5) takes class groups P_k = {x_1^k .. x_C^k},
one real image per class, and for each teacher m learns ONE additive perturbation u_k^m of
image shape, shared by the whole group, by minimising

    (1/C) sum_c CE(f_m(J(x_c^k + u)), c)
        + r_bn * sum_l s_l (||mu_l(B) - mu_l^run||_2 + ||sigma^2_l(B) - sigma^2_l^run||_2)

where J is a random roll jitter, mu_l / sigma^2_l are the per-channel mean and biased variance
over (N, H, W) of the input of BatchNorm layer l of f_m, s_1 = 10 for the first BN layer and 1
for the others (SRe2L's "recover" loss, with u rather than the pixels as the variable). The
teacher stays in eval mode with frozen parameters; u starts at zero and is optimised with
Adam(lr 0.25, betas (0.5, 0.9)) and a per-iteration cosine decay to 0, for 1000 iterations.

Unlike the official code, teachers and their BN hooks are built once for all groups, and
the hooks are removed when done.

Example:
    >>> groups = sample_class_groups(x, y, 10, k=7, generator=g)      # doctest: +SKIP
    >>> u = generate_compensators(teachers, groups.images)             # doctest: +SKIP
    >>> u.shape   # (K, M, Ch, H, W)                                   # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from datadistill.errors import CompatibilityError, DatasetError, DivergenceError
from datadistill.infer.imagenet import batch_resized_crop_flip
from datadistill.infer.transforms import pixels_at
from datadistill.runtime.progress import progress_bar

log = logging.getLogger(__name__)


@dataclass
class ClassGroups:
    """K groups of one real image per class.

    Attributes:
        images: (K, C, Ch, H, W); ``images[k, c]`` is an image of class c.
        indices: (K, C) int64 positions of those images in the source set (provenance).
    """

    images: torch.Tensor
    indices: torch.Tensor


def sample_class_groups(
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    k: int,
    generator: torch.Generator | None = None,
) -> ClassGroups:
    """Draw K distinct real images per class (without replacement) and arrange them in groups.

    images: (N, Ch, H, W); labels: (N,). Every image appears in at most one group.

    Example:
        >>> x, y = torch.randn(40, 1, 8, 8), torch.arange(4).repeat(10)
        >>> sample_class_groups(x, y, 4, k=3, generator=torch.Generator()).images.shape
        torch.Size([3, 4, 1, 8, 8])
    """
    chosen = []
    for c in range(num_classes):
        pool = torch.nonzero(labels.cpu() == c).flatten()  # (N_c,)
        if len(pool) < k:
            raise DatasetError(
                f"class {c} has {len(pool)} training images but {k} class groups need {k}; "
                "lower ipc or use a dataset with more images per class"
            )
        chosen.append(pool[torch.randperm(len(pool), generator=generator)[:k]])
    indices = torch.stack(chosen, dim=1)  # (K, C)
    return ClassGroups(images=images[indices.to(images.device)].clone(), indices=indices)


class BNStatistics:
    """Forward hooks on every BatchNorm layer that record the SRe2L statistic distance.

    On each forward, layer l adds ``||mu_l(B) - running_mean_l||_2 +
    ||var_l(B) - running_var_l||_2`` of its *input* to ``self.terms`` (in call order). Use as a
    context manager so the hooks are always removed.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)).eval()
        >>> with BNStatistics(net) as bn:
        ...     _ = net(torch.randn(4, 1, 8, 8))
        ...     len(bn.terms)
        1
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.terms: list[torch.Tensor] = []
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> BNStatistics:
        for module in self.model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                self._handles.append(module.register_forward_hook(self._record))
        if not self._handles:
            raise CompatibilityError(
                f"{type(self.model).__name__} has no BatchNorm layer; INFER's compensator loss "
                "needs BN running statistics, so use a BatchNorm teacher"
            )
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.terms.clear()

    def _record(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: object) -> None:
        self.terms.append(bn_distance(inputs[0], module.running_mean, module.running_var))

    def loss(self, first_multiplier: float = 10.0) -> torch.Tensor:
        """sum_l s_l * term_l over the layers of the last forward (s_1 = first_multiplier),
        then forget them."""
        weights = [first_multiplier] + [1.0] * (len(self.terms) - 1)
        total = sum(w * t for w, t in zip(weights, self.terms, strict=True))
        self.terms.clear()
        return total


def bn_distance(
    x: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor
) -> torch.Tensor:
    """||mean(x) - running_mean||_2 + ||var(x) - running_var||_2 over all dims but channel 1.

    x: (N, C, ...) the input of a BN layer; the variance is biased (divides by N*H*W), as BN
    normalises with it.
    """
    dims = [0, *range(2, x.dim())]
    mean = x.mean(dims)  # (C,)
    var = x.var(dims, unbiased=False)  # (C,)
    return torch.linalg.vector_norm(mean - running_mean) + torch.linalg.vector_norm(
        var - running_var
    )


def roll_jitter(x: torch.Tensor, jitter: int, generator: torch.Generator | None) -> torch.Tensor:
    """Roll x (N, C, H, W) by one random (dy, dx), each in [0, jitter], shared by the batch."""
    if jitter <= 0:
        return x
    dy, dx = torch.randint(0, jitter + 1, (2,), generator=generator).tolist()
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


def cosine_lr(base_lr: float, iteration: int, total: int) -> float:
    """0.5 * (1 + cos(pi * t / T)) * base_lr: the official per-iteration schedule, no warm-up."""
    return 0.5 * (1 + math.cos(math.pi * iteration / total)) * base_lr


@dataclass(frozen=True)
class CompensatorSettings:
    """Optimisation of one compensator; defaults are the official CIFAR values
    (``sh/ufc_cifar.sh``). INFER's config holds it as its flat ``compensator`` section."""

    iterations: int = 1000  # sh/ufc_cifar.sh (ImageNet: 2000)
    lr: float = 0.25  # Adam on u, cosine to 0 per iteration, no warm-up
    betas: tuple[float, float] = (0.5, 0.9)
    r_bn: float = 1.0  # weight of the BN-statistics loss (CIFAR 1, ImageNet 0.01)
    crop_flip: bool = False  # ImageNet: RandomResizedCrop + flip per batch before the jitter
    first_bn_multiplier: float = 10.0  # s_1: extra weight of the first BN layer
    jitter: int | None = None  # max roll offset in px; None: 4 px at 32 px, scaled by size


def optimise_compensator(
    teacher: nn.Module,
    bn: BNStatistics,
    group: torch.Tensor,
    settings: CompensatorSettings = CompensatorSettings(),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Learn one compensator u (1, Ch, H, W) for ``group`` (C, Ch, H, W), image c of class c.

    ``teacher`` must be in eval mode with frozen parameters and ``bn`` its active
    :class:`BNStatistics`. Returns the detached u of the last iterate.
    """
    st = settings
    jitter = pixels_at(tuple(group.shape[-2:]), st.jitter)
    targets = torch.arange(group.shape[0], device=group.device)  # (C,): image c is class c
    u = torch.zeros(1, *group.shape[1:], device=group.device, requires_grad=True)
    opt = torch.optim.Adam([u], lr=st.lr, betas=tuple(st.betas), eps=1e-8)
    for t in range(st.iterations):
        for param_group in opt.param_groups:
            param_group["lr"] = cosine_lr(st.lr, t, st.iterations)
        x = group + u  # (C, Ch, H, W), u broadcast to all
        if st.crop_flip:
            x = batch_resized_crop_flip(x, generator)
        x = roll_jitter(x, jitter, generator)
        bn.terms.clear()
        ce = F.cross_entropy(teacher(x), targets)
        loss = ce + st.r_bn * bn.loss(st.first_bn_multiplier)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    # Checked once at the end: a per-iteration check would synchronise the GPU every step.
    if not torch.isfinite(u).all():
        raise DivergenceError("a compensator became NaN or infinite; lower lr or r_bn")
    if st.iterations:
        log.debug("compensator: last CE %.4f, total loss %.4f", ce.item(), loss.item())
    return u.detach()


def generate_compensators(
    teachers: list[nn.Module],
    groups: torch.Tensor,
    settings: CompensatorSettings = CompensatorSettings(),
    generator: torch.Generator | None = None,
    progress: bool = False,
    resume: tuple[int, torch.Tensor] | None = None,
    on_group: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Compensators for every (group k, teacher m): returns (K, M, Ch, H, W).

    groups: (K, C, Ch, H, W) normalised real images on the teachers' device. Teachers are
    switched to eval mode and frozen here; the BN hooks live only inside this call.
    ``resume=(k, out)``: groups ``0..k-1`` are done in ``out`` (and ``generator`` is in the
    state it had after them); ``on_group(k, out)`` is called after each finished group, so a
    caller can save progress (:func:`datadistill.infer.pipeline.distill_infer`).
    """
    for teacher in teachers:
        teacher.eval().requires_grad_(False)
    k_groups, m = groups.shape[0], len(teachers)
    first, out = 0, torch.zeros(k_groups, m, *groups.shape[2:], device=groups.device)
    if resume is not None:
        first, out = resume[0], resume[1].to(groups.device)
    with ExitStack() as stack:  # removes every hook, even on error
        hooks = [stack.enter_context(BNStatistics(t)) for t in teachers]
        bar = stack.enter_context(
            progress_bar(total=k_groups * m, enabled=progress, desc="compensators", leave=False,
                         stage=True)
        )
        bar.update(first * m)
        for k in range(first, k_groups):
            for i, (teacher, bn) in enumerate(zip(teachers, hooks, strict=True)):
                u = optimise_compensator(teacher, bn, groups[k], settings, generator)
                out[k, i] = u[0]
                bar.update()
            if on_group is not None:
                on_group(k + 1, out)
    return out
