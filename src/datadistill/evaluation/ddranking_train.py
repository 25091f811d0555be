"""One DD-Ranking training: its optimisers, schedules, losses and batch augmentations.

DD-Ranking (Li et al., arXiv 2505.13300; `NUS-HPC-AI-Lab/DD-Ranking`, per-method configs on its
``eval`` branch) trains every network with the same loop, switched by its config:

- optimiser ``sgd`` (momentum, weight decay) | ``adam`` | ``adamw``; the optimiser is built once,
  so a step schedule keeps the momentum (unlike the classic loop, which re-creates SGD);
- schedule, stepped once per epoch: ``step`` = StepLR(step_size, 0.1); ``cosineannealing`` =
  CosineAnnealingLR(T_max=epochs); ``cosine`` = DD-Ranking's half cosine
  ``0.5 (1 + cos(pi e / (2 E)))``, which ends at half the lr;
- ``epochs`` epochs (not ``epochs + 1``), a fresh permutation per epoch;
- augmentation per batch: DSA, mixup (lambda ~ Beta(a, a), a random permutation) or cutmix
  (lambda ~ Beta(b, b), one box per batch);
- loss: cross-entropy (hard labels) or, for (N, K) teacher logits, SCE / KL with temperature
  T (optionally x T^2) / ``mse_gt`` = w_mse MSE(s, t) + w_ce CE(s, y);
- soft-label mode ``S``: stored logits per image; ``M``: the teachers' mean logits on every
  augmented batch (the teachers in eval mode);
- test accuracy every ``test_every`` epochs; the best is reported (and the last is kept too).

Difference from DD-Ranking's code, following its paper and the mixup/cutmix papers: in mixup
and cutmix the targets are mixed with the images (DD-Ranking mixes only the images, so in mode
``S`` and with hard labels each mixed image keeps the label of its first image). The mix is
applied to the loss, ``lam L(out, y) + (1 - lam) L(out, y[perm])``, whose gradient equals
that of the loss on the mixed target distribution for every loss here (CE, SCE and the
student term of KL are linear in the target; the MSE gradient is linear in the target).
In mode ``M`` the teacher sees the mixed image, so its logits need no mixing.

Example:
    >>> spec = TrainSpec(lr=0.01, epochs=10, test_every=5)
    >>> curve = train_spec(net, x, y, test, spec, seed=0)                   # doctest: +SKIP
    >>> curve.best, curve.last                                              # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from datadistill.data import ImageSet
from datadistill.data.augment import DSA
from datadistill.errors import ConfigError
from datadistill.evaluation.classic import RunCurve as Curve  # tests after tested epochs
from datadistill.evaluation.classic import with_options
from datadistill.labels import hard_labels
from datadistill.training import EpochEnd, FitHooks, FitOptions, fit, test_accuracy

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("step", "cosine", "cosineannealing", "none")
AUGMENTS = ("dsa", "mixup", "cutmix", "none")
LOSSES = ("ce", "sce", "kl", "mse_gt")


@dataclass
class TrainSpec:
    """How one network is trained and tested (DD-Ranking's config keys in the comments)."""

    lr: float  # the lr of this training (searched or the set's own)
    epochs: int = 1000  # num_epochs
    batch_size: int = 256  # syn_batch_size / real_batch_size
    optimizer: str = "sgd"  # optimizer
    scheduler: str = "step"  # lr_scheduler
    step_size: int = 500  # step_size (StepLR, gamma 0.1)
    weight_decay: float = 5e-4  # weight_decay
    momentum: float = 0.9  # momentum (SGD)
    augment: str = "dsa"  # data_aug_func
    dsa_strategy: str | None = None  # aug_params (DSA); None: the dataset's (no flip on digits)
    mixup_alpha: float = 0.8  # aug_params.lambda
    cutmix_beta: float = 1.0  # aug_params.beta
    loss: str = "ce"  # soft_label_criterion (hard labels: ce)
    temperature: float = 1.0  # loss_fn_kwargs.temperature
    scale_loss: bool = False  # loss_fn_kwargs.scale_loss (x T^2)
    mse_weight: float = 1.0  # loss_fn_kwargs.mse_weight
    ce_weight: float = 0.0  # loss_fn_kwargs.ce_weight
    test_every: int = 10  # test_interval (hard 10, soft 20)

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("optimizer", self.optimizer, OPTIMIZERS),
            ("scheduler", self.scheduler, SCHEDULERS),
            ("augment", self.augment, AUGMENTS),
            ("loss", self.loss, LOSSES),
        ):
            if value not in allowed:
                raise ConfigError(f"{name}={value!r}; choose from {allowed}")
        if not self.lr > 0 or self.epochs < 1 or self.batch_size < 1 or self.test_every < 1:
            raise ConfigError("lr must be > 0 and epochs, batch_size, test_every >= 1")


# ----------------------------------------------------------------------------- pieces


def make_optimizer(spec: TrainSpec, net: nn.Module) -> torch.optim.Optimizer:
    params = net.parameters()
    if spec.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay
        )
    cls = torch.optim.Adam if spec.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=spec.lr, weight_decay=spec.weight_decay)


def make_scheduler(spec: TrainSpec, opt: torch.optim.Optimizer):
    """Stepped once per epoch, as DD-Ranking does; None for a constant lr."""
    if spec.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=spec.step_size, gamma=0.1)
    if spec.scheduler == "cosineannealing":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=spec.epochs)
    if spec.scheduler == "cosine":  # half cosine: 1 -> 0.5 over the run, then 0
        e_max = spec.epochs

        def factor(e: int) -> float:
            return 0.5 * (1.0 + math.cos(math.pi * e / e_max / 2)) if e <= e_max else 0.0

        return torch.optim.lr_scheduler.LambdaLR(opt, factor)
    return None


LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def make_loss(spec: TrainSpec) -> LossFn:
    """loss(student logits (B, K), target (B,) or (B, K), class indices (B,)) -> scalar."""
    t = spec.temperature

    def loss(out: torch.Tensor, target: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        if target.dim() == 1:  # hard labels
            return F.cross_entropy(out, target)
        if spec.loss == "mse_gt":
            return spec.mse_weight * F.mse_loss(out, target) + spec.ce_weight * F.cross_entropy(
                out, classes
            )
        p = F.softmax(target / t, dim=1)  # (B, K) target distribution
        logq = F.log_softmax(out / t, dim=1)
        if spec.loss == "kl":
            value = F.kl_div(logq, p, reduction="batchmean")
        else:  # sce, and ce on soft targets
            value = -(p * logq).sum() / out.shape[0]
        return value * t * t if spec.scale_loss else value

    return loss


@dataclass
class Mix:
    """A mixup/cutmix draw: second image index per sample and the first image's share."""

    perm: torch.Tensor  # (B,)
    lam: float


def mixup(x: torch.Tensor, alpha: float, rng: np.random.Generator, gen: torch.Generator):
    """Mixup (Zhang et al. 2018): lam x + (1 - lam) x[perm], lam ~ Beta(alpha, alpha)."""
    perm = torch.randperm(x.shape[0], generator=gen).to(x.device)
    lam = float(rng.beta(alpha, alpha))
    return lam * x + (1 - lam) * x[perm], Mix(perm, lam)


def cutmix(x: torch.Tensor, beta: float, rng: np.random.Generator, gen: torch.Generator):
    """CutMix (Yun et al. 2019): one box from x[perm]; lam = the share of x left visible."""
    perm = torch.randperm(x.shape[0], generator=gen).to(x.device)
    lam = float(rng.beta(beta, beta))
    h, w = x.shape[-2:]
    cut = math.sqrt(1.0 - lam)
    ch, cw = int(h * cut), int(w * cut)
    cy, cx = int(rng.integers(h)), int(rng.integers(w))
    y1, y2 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
    x1, x2 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
    out = x.clone()
    out[..., y1:y2, x1:x2] = x[perm][..., y1:y2, x1:x2]
    # The label share follows the box actually pasted (clipped at the borders).
    return out, Mix(perm, 1.0 - (y2 - y1) * (x2 - x1) / (h * w))


# ----------------------------------------------------------------------------- the loop


@torch.no_grad()
def teacher_logits(teachers: Sequence[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """Mean logits (B, K) of the teachers (eval mode) on x (B, C, H, W)."""
    outs = []
    for teacher in teachers:
        teacher.eval()
        outs.append(teacher(x))
    return torch.stack(outs).mean(dim=0)


def _augment(spec: TrainSpec, dsa: DSA | None, xb, rng, gen) -> tuple[torch.Tensor, Mix | None]:
    if spec.augment == "dsa" and dsa is not None:
        return dsa(xb, generator=gen), None
    if spec.augment == "mixup":
        return mixup(xb, spec.mixup_alpha, rng, gen)
    if spec.augment == "cutmix":
        return cutmix(xb, spec.cutmix_beta, rng, gen)
    return xb, None


@dataclass
class _Targets:
    """Per-sample targets of a batch: (B,) or (B, K) labels, (B,) classes, and the mix that
    made the batch (None: unmixed). Indexable like a tensor, so :func:`fit` can batch it."""

    y: torch.Tensor
    classes: torch.Tensor
    mix: Mix | None = None

    @property
    def device(self) -> torch.device:
        return self.y.device

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, idx: torch.Tensor) -> _Targets:
        return _Targets(self.y[idx], self.classes[idx])

    def to(self, device: str | torch.device) -> _Targets:
        return _Targets(self.y.to(device), self.classes.to(device), self.mix)


def _mixed_loss(loss_fn: LossFn) -> Callable[[torch.Tensor, _Targets], torch.Tensor]:
    """``lam L(out, y) + (1 - lam) L(out, y[perm])`` for a mixed batch, else ``L(out, y)``."""

    def loss(out: torch.Tensor, t: _Targets) -> torch.Tensor:
        value = loss_fn(out, t.y, t.classes)
        if t.mix is None:
            return value
        lam, perm = t.mix.lam, t.mix.perm
        return lam * value + (1 - lam) * loss_fn(out, t.y[perm], t.classes[perm])

    return loss


def _batch_augment(spec: TrainSpec, dsa: DSA | None, teachers: Sequence[nn.Module],
                   rng: np.random.Generator):
    """DSA / mixup / cutmix of a batch; in mode M the teachers label the augmented batch
    itself (so their logits need no mixing)."""

    def augment(xb: torch.Tensor, t: _Targets, gen: torch.Generator | None):
        xb, mix = _augment(spec, dsa, xb, rng, gen)  # (B, C, H, W)
        if teachers:
            return xb, _Targets(teacher_logits(teachers, xb), t.classes)
        return xb, _Targets(t.y, t.classes, mix)

    return augment


@dataclass(frozen=True)
class SpecRun:
    """One :func:`train_spec` training: its seed and what it trains with besides the spec."""

    seed: int
    augment: bool = True  # False: no augmentation (the full-data reference, ARS's term)
    teachers: Sequence[nn.Module] = ()  # mode M: the teachers label every batch
    classes: torch.Tensor | None = None  # (N,) class indices for mse_gt's CE term
    device: str | torch.device = "cpu"


def train_spec(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, test: ImageSet,
               spec: TrainSpec, options: SpecRun | None = None, **overrides: Any) -> Curve:
    """Train `net` in place on (images, labels) with `spec`; test every `spec.test_every` epochs.

    `options` is a :class:`SpecRun`; its fields may also be given as keywords (``seed``,
    ``augment``, ``teachers``, ``classes``, ``device``).
    `labels` are (N,) class indices or (N, K) logits (mode S); with `teachers` (mode M) the
    targets are the teachers' mean logits on every augmented batch and `labels` only give the
    classes. `classes` (N,) are the class indices that ``mse_gt``'s CE term uses (default: the
    hard labels, or the argmax of soft ones). `augment=False` trains without augmentation (the
    full-data reference, ARS's no-augmentation term). The last epoch is always tested. The
    loop is :func:`datadistill.training.fit`.

    Example:
        >>> train_spec(net, x, y, real.test, TrainSpec(lr=0.01, epochs=20),
        ...            seed=0).best                                         # doctest: +SKIP
    """
    o = with_options(SpecRun, options, overrides, "train_spec")
    seed, augment, teachers, classes, device = o.seed, o.augment, o.teachers, o.classes, o.device
    x, y = images.detach().to(device), labels.detach().to(device)
    classes = hard_labels(y) if classes is None else classes.to(device)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)  # Beta draws and cutmix boxes
    use = spec if augment else _no_aug(spec)
    dsa = DSA(use.dsa_strategy or test.info.dsa_strategy) if use.augment == "dsa" else None
    opt = make_optimizer(use, net)
    sched = make_scheduler(use, opt)
    curve = Curve()

    def after_epoch(end: EpochEnd) -> None:
        if (end.epoch + 1) % use.test_every == 0 or end.epoch + 1 == use.epochs:
            curve.epochs.append(end.epoch + 1)
            curve.accuracies.append(test_accuracy(net, test.images, test.labels, device=device))

    fit(net, x, _Targets(y, classes), opt,
        FitOptions(epochs=use.epochs, batch_size=use.batch_size, device=device),
        FitHooks(loss=_mixed_loss(make_loss(use)), augment=_batch_augment(use, dsa, teachers, rng),
                 schedule=None if sched is None else _stepped(sched), after_epoch=after_epoch),
        generator=gen)
    return curve


def _stepped(sched) -> Callable[[int, torch.optim.Optimizer], torch.optim.Optimizer]:
    def schedule(epoch: int, opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
        sched.step()
        return opt

    return schedule


def _no_aug(spec: TrainSpec) -> TrainSpec:
    return replace(spec, augment="none")
