"""The supervised training core: one explicit loop, :func:`fit`, and the pieces around it.

Every network the library trains on labelled images goes through :func:`fit`: the classic and
challenge evaluation protocols, the expert trajectories (SGD or GSAM), the briefly trained
difficulty scorers, INFER's teachers and students and the baselines. What differs between them
is the optimiser, the sizes (:class:`FitOptions`) and what is plugged in (:class:`FitHooks`):

- ``optimizer``: any ``torch.optim.Optimizer``; every update is ``optimizer.step(closure)``,
  so a two-pass optimiser such as GSAM (:mod:`datadistill.experts.gsam`) is just another
  optimiser, not another loop;
- ``schedule(epoch, optimizer) -> optimizer`` after each epoch: a cosine scheduler's
  ``step()``, or the classic protocol's decay that re-creates the optimiser;
- ``loss(outputs, targets)``: hard cross-entropy, soft cross-entropy on (N, K) logits
  (:func:`datadistill.labels.label_loss`), or a KL divergence at a temperature (INFER's
  ``kd_loss``);
- ``augment(images, targets, generator) -> (images, targets)``: DSA, crop/flip, mixup/CutMix
  (which also mix the targets); :func:`images_only` adapts an image-only augmentation;
- hooks before and after each epoch: snapshots, checkpoints, periodic tests.

Randomness: the data order and every augmentation draw come from one ``generator`` (drawn on
the CPU, so runs do not depend on the device); models are built under :func:`seeded`, which
never touches the caller's global RNG; :func:`run_seeds` derives a run's seeds from
``(seed, run)`` alone.

Example:
    >>> net = torch.nn.Linear(2, 2)
    >>> x, y = torch.randn(8, 2), torch.arange(8) % 2
    >>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
    >>> _ = fit(net, x, y, opt, FitOptions(epochs=2, batch_size=4),
    ...         generator=torch.Generator().manual_seed(0))
    >>> 0.0 <= test_accuracy(net, x, y) <= 1.0
    True
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from datadistill.labels import LossFn, hard_labels
from datadistill.models import create_model
from datadistill.runtime.progress import progress_bar

T = TypeVar("T")
Augment = Callable[[torch.Tensor, Any, "torch.Generator | None"], tuple[torch.Tensor, Any]]
Schedule = Callable[[int, torch.optim.Optimizer], torch.optim.Optimizer]
EpochPool = Callable[[int], torch.Tensor]  # 0-based epoch -> int64 indices into the data


@dataclass
class EpochEnd:
    """What an ``after_epoch`` hook sees: the epoch just trained (0-based), the optimiser the
    next epoch uses, and the summed loss over ``steps`` updates (a 0-dim tensor)."""

    epoch: int
    optimizer: torch.optim.Optimizer
    loss_sum: torch.Tensor | float
    steps: int

    @property
    def mean_loss(self) -> float:
        return float(self.loss_sum) / max(1, self.steps)


# ----------------------------------------------------------------------------- seeds / models


def derive_seeds(*key: int, n: int = 2) -> tuple[int, ...]:
    """``n`` independent 32-bit seeds from the integer ``key`` (numpy SeedSequence).

    Example:
        >>> derive_seeds(0, 1) == derive_seeds(0, 1) != derive_seeds(0, 2)
        True
    """
    return tuple(int(s) for s in np.random.SeedSequence(list(key)).generate_state(n))


def run_seeds(seed: int, run: int) -> tuple[int, int]:
    """(init seed, training seed) of run (or expert, or teacher) ``run``; independent across
    (seed, run) pairs, so runs can be trained in any order or process."""
    init_seed, train_seed = derive_seeds(seed, run)
    return init_seed, train_seed


def seeded(factory: Callable[[], T], seed: int | None) -> T:
    """``factory()`` (e.g. a model constructor) with torch's CPU RNG seeded to ``seed``,
    restoring the caller's global RNG state afterwards (no hidden global reseeding).
    ``seed=None`` draws from the (forked) global RNG and still leaves it untouched."""
    with torch.random.fork_rng(devices=[]):  # models are built on CPU (factories never move)
        if seed is not None:
            torch.default_generator.manual_seed(seed)  # CPU only: CUDA generators untouched
        return factory()


def build_model(model: Any, info: Any, init_seed: int | None = None, *,
                model_kwargs: dict | None = None) -> nn.Module:
    """A registry model for dataset ``info`` on the CPU, initialised under ``init_seed``.

    ``model`` is a registry name, or any config with ``model`` and ``model_kwargs`` fields
    (expert, distillation or student config), whose kwargs are then used.

    Example:
        >>> net = build_model("convnet", get_info("digits"), 0,
        ...                   model_kwargs={"width": 8})                   # doctest: +SKIP
        >>> net = build_model(ExpertConfig(), info, init_seed=0)            # doctest: +SKIP
    """

    name = model if isinstance(model, str) else model.model
    kwargs = dict((model_kwargs if isinstance(model, str) else model.model_kwargs) or {})
    return seeded(
        lambda: create_model(name, info.channels, info.num_classes, info.image_size, **kwargs),
        init_seed,
    )


# ----------------------------------------------------------------------------- batching / losses


def shuffled_batches(n: int, batch_size: int, generator: torch.Generator | None = None, *,
                     pool: torch.Tensor | None = None,
                     drop_single: bool = False) -> Iterator[torch.Tensor]:
    """Index batches of one shuffled epoch (CPU int64 tensors): one ``randperm`` per epoch.

    ``pool`` restricts the epoch to those indices (PAD's curriculum); otherwise ``n`` items.
    ``drop_single`` drops a trailing batch of one item (BatchNorm cannot compute training
    statistics from one sample when the last feature map is 1x1, e.g. digits at 8 px).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> [len(b) for b in shuffled_batches(5, 2, g, drop_single=True)]
        [2, 2]
    """
    size = n if pool is None else len(pool)
    order = torch.randperm(size, generator=generator)
    if pool is not None:
        order = pool.long().cpu()[order]
    for start in range(0, size, batch_size):
        idx = order[start : start + batch_size]
        if len(idx) > 1 or size == 1 or not drop_single:
            yield idx


def images_only(augment: Callable[..., torch.Tensor]) -> Augment:
    """Adapt ``augment(x, generator=g)`` (e.g. a DSA) to :func:`fit`'s (x, y, g) form."""

    def apply(x: torch.Tensor, y: Any, generator: torch.Generator | None):
        return augment(x, generator=generator), y

    return apply


def _take(data: Any, idx: torch.Tensor, device: str | torch.device) -> Any:
    """Rows ``idx`` of ``data`` (tensor or indexable with ``.device``) on ``device``."""
    if data is None:
        return None
    return data[idx.to(data.device)].to(device)


def cosine_schedule(optimizer: torch.optim.Optimizer, epochs: int) -> tuple[Schedule, Any]:
    """Cosine annealing over ``epochs`` stepped once per epoch, as a :func:`fit` schedule,
    and the scheduler itself (for checkpoints)."""
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs))

    def schedule(epoch: int, opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
        sched.step()
        return opt

    return schedule, sched


# ----------------------------------------------------------------------------- the loop


def train_step(net: nn.Module, optimizer: torch.optim.Optimizer, loss: LossFn,
               x: torch.Tensor, y: Any) -> torch.Tensor:
    """One update ``optimizer.step(closure)``; the closure clears, forwards and backwards."""

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        value = loss(net(x), y)
        value.backward()
        return value

    return optimizer.step(closure)


@dataclass(frozen=True)
class FitOptions:
    """How long and how :func:`fit` trains: ``epochs`` (trains ``start_epoch .. epochs - 1``),
    batches of ``batch_size`` moved to ``device``, ``drop_single`` (drop a trailing batch of
    one item, see :func:`shuffled_batches`) and the progress bar (``progress``, its ``desc``,
    ``stage``: a bar of a stage of a longer job).

    Example:
        >>> FitOptions(epochs=3, batch_size=256).device
        'cpu'
    """

    epochs: int
    batch_size: int
    device: str | torch.device = "cpu"
    drop_single: bool = False
    start_epoch: int = 0
    progress: bool = False
    desc: str = "train"
    stage: bool = False


@dataclass(frozen=True)
class FitHooks:
    """What is plugged into :func:`fit`'s loop (see the module docstring): the ``loss``, the
    batch ``augment``-ation, the ``schedule`` after each epoch, the hooks ``before_epoch``
    and ``after_epoch``, and ``epoch_pool`` (the indices an epoch draws from, else all)."""

    loss: LossFn = F.cross_entropy
    augment: Augment | None = None
    schedule: Schedule | None = None
    before_epoch: Callable[[int, torch.optim.Optimizer], None] | None = None
    after_epoch: Callable[[EpochEnd], None] | None = None
    epoch_pool: EpochPool | None = None


def fit(net: nn.Module, images: Any, targets: Any, optimizer: torch.optim.Optimizer,
        options: FitOptions, hooks: FitHooks | None = None, *,
        generator: torch.Generator | None = None) -> nn.Module:
    """Train ``net`` in place for epochs ``options.start_epoch .. options.epochs - 1`` and
    return it.

    Per epoch: ``hooks.before_epoch(epoch, optimizer)``, then one shuffled pass over ``images``
    (N, C, H, W) and ``targets`` ((N,), (N, K) or None when the augmentation makes them) in
    batches of ``options.batch_size``, each batch augmented and stepped with
    ``optimizer.step(closure)``; then ``optimizer = hooks.schedule(epoch, optimizer)`` and
    ``hooks.after_epoch(EpochEnd(...))``. The data stay where they are; each batch is moved to
    ``options.device``. ``generator`` draws the data order and every augmentation; no
    ``hooks``: plain cross-entropy, nothing else plugged in.

    Example:
        >>> fit(net, x, y, torch.optim.SGD(net.parameters(), lr=0.01),
        ...     FitOptions(epochs=3, batch_size=256),
        ...     FitHooks(augment=images_only(DSA())))                       # doctest: +SKIP
    """
    o, h = options, FitHooks() if hooks is None else hooks
    net.to(o.device)
    bar = progress_bar(range(o.start_epoch, o.epochs), initial=o.start_epoch, total=o.epochs,
                       enabled=o.progress, desc=o.desc, stage=o.stage, leave=False)
    for epoch in bar:
        if h.before_epoch is not None:
            h.before_epoch(epoch, optimizer)
        net.train()
        pool = None if h.epoch_pool is None else h.epoch_pool(epoch)
        loss_sum: torch.Tensor | float = 0.0  # summed on the device: no sync per step
        steps = 0
        for idx in shuffled_batches(len(images), o.batch_size, generator, pool=pool,
                                    drop_single=o.drop_single):
            xb, yb = _take(images, idx, o.device), _take(targets, idx, o.device)
            if h.augment is not None:
                xb, yb = h.augment(xb, yb, generator)
            value = train_step(net, optimizer, h.loss, xb, yb)
            loss_sum, steps = loss_sum + value.detach(), steps + 1
        if h.schedule is not None:
            optimizer = h.schedule(epoch, optimizer)
        if o.progress:
            bar.set_postfix(loss=f"{float(loss_sum) / max(1, steps):.3f}")
        if h.after_epoch is not None:
            h.after_epoch(EpochEnd(epoch, optimizer, loss_sum, steps))
    return net


@torch.no_grad()
def test_accuracy(
    net: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int = 512,
    device: str | torch.device = "cpu",
) -> float:
    """Top-1 accuracy of `net` on (images, labels) as a fraction in [0, 1].

    Example:
        >>> test_accuracy(net, real.test.images, real.test.labels)        # doctest: +SKIP
        0.6512
    """
    was_training = net.training
    net.to(device).eval()
    # channels_last speeds the CPU forward of ConvNet by ~25% (measured; pooling is faster in
    # NHWC); it did not help CPU training with DSA, and is untested on GPU, so CPU tests only.
    layout = torch.channels_last if torch.device(device).type == "cpu" else None
    if layout is not None:
        net.to(memory_format=layout)
    labels = hard_labels(labels)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    try:
        for start in range(0, images.shape[0], batch_size):
            xb = images[start : start + batch_size].to(device, non_blocking=True)
            if layout is not None and xb.dim() == 4:
                xb = xb.contiguous(memory_format=layout)
            yb = labels[start : start + batch_size].to(device, non_blocking=True)
            correct += (net(xb).argmax(dim=1) == yb).sum()  # summed on device: one sync
    finally:
        if layout is not None:
            net.to(memory_format=torch.contiguous_format)
        net.train(was_training)
    return int(correct) / max(1, images.shape[0])


test_accuracy.__test__ = False  # its name starts with "test": keep pytest from collecting it
