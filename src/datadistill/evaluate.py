"""Evaluation protocols: train fresh networks on a (distilled) set and test them on real data.

Protocols:

- ``"classic"`` (DC/DSA/MTT/DATM ``evaluate_synset``): SGD momentum 0.9, weight decay 5e-4, the
  set's learned lr (else 0.01), ``epochs + 1`` epochs (1000 -> 1001 as in the official loop),
  lr x0.1 after epoch ``epochs // 2 + 1`` with the optimiser re-created (momentum reset), batch
  256, DSA on every batch, hard labels -> cross-entropy, soft (N, K) logits -> soft
  cross-entropy (DATM), test accuracy once at the end; mean and std (ddof 0) over runs.
- ``"challenge"`` (ECCV-2024 track 1): labels implied by class-major order, fixed lr 0.01,
  ConvNet depth 3 at any resolution, 3 runs, DSA, cross-entropy.

Accuracies are fractions in [0, 1]. The synthetic set is tiny, so it lives on the device and
is indexed with a fresh permutation per epoch (no DataLoader).

Example:
    >>> real = prepare("cifar10")                                          # doctest: +SKIP
    >>> report = evaluate(ds.images, ds.labels, real.test, lr=ds.lr)        # doctest: +SKIP
    >>> print(report)                                                      # doctest: +SKIP
    convnet (classic): 65.12 +- 0.31 % over 5 runs
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from datadistill.augment import DSA
from datadistill.checks import check_finite, check_training
from datadistill.data import ImageSet
from datadistill.errors import CompatibilityError, ConfigError
from datadistill.matching.soft_labels import soft_cross_entropy
from datadistill.models import create_model
from datadistill.progress import progress_bar
from datadistill.runlog import RunCache, fingerprint

log = logging.getLogger(__name__)

PROTOCOLS = ("classic", "challenge")
DEFAULT_LR = 0.01  # DC/DSA lr_net and the challenge's fixed lr
DEFAULT_RUNS = {"classic": 5, "challenge": 3}
# MTT's eval_mode 'M' pool for cross-architecture generalisation.
CROSS_MODELS = ("convnet", "alexnet", "vgg11", "resnet18_ap", "resnet18")

EpochHook = Callable[[int, torch.optim.Optimizer], None]


@dataclass
class EvalReport:
    """Accuracies (fractions) of `len(accuracies)` independently trained networks.

    Example:
        >>> EvalReport.from_accuracies("classic", "convnet", [0.5, 0.6]).mean
        0.55
    """

    protocol: str
    model: str
    accuracies: list[float]
    mean: float
    std: float
    settings: dict = field(default_factory=dict)

    @classmethod
    def from_accuracies(
        cls, protocol: str, model: str, accuracies: Sequence[float], settings: dict | None = None
    ) -> EvalReport:
        accs = [float(a) for a in accuracies]
        # np.std with ddof 0, as the official scripts report it.
        return cls(
            protocol, model, accs, float(np.mean(accs)), float(np.std(accs)), dict(settings or {})
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        return (
            f"{self.model} ({self.protocol}): {100 * self.mean:.2f} +- "
            f"{100 * self.std:.2f} % over {len(self.accuracies)} runs"
        )


# ----------------------------------------------------------------------------- losses / labels


def hard_labels_from(labels: torch.Tensor) -> torch.Tensor:
    """(N,) class indices from hard labels (returned as-is) or (N, K) soft logits (argmax)."""
    return labels.argmax(dim=1) if labels.dim() == 2 else labels


def _loss_for(labels: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    return soft_cross_entropy if labels.dim() == 2 else F.cross_entropy


# ----------------------------------------------------------------------------- train / test


def _sgd(net: nn.Module, lr: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    return torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)


def _train_epoch(
    net: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    opt: torch.optim.Optimizer,
    loss_fn: Callable,
    batch_size: int,
    dsa: DSA | None,
    generator: torch.Generator | None,
) -> None:
    # Permutation drawn on CPU from `generator` so runs are device-independent.
    perm = torch.randperm(x.shape[0], generator=generator).to(x.device)
    for idx in perm.split(batch_size):
        xb, yb = x[idx], y[idx]  # (B, C, H, W), (B,) or (B, K)
        if dsa is not None:
            xb = dsa(xb, generator=generator)
        loss = loss_fn(net(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def train_network(
    net: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    lr: float,
    epochs: int,
    batch_size: int = 256,
    dsa: DSA | None = None,
    generator: torch.Generator | None = None,
    device: str | torch.device = "cpu",
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    progress: bool = False,
    on_epoch: EpochHook | None = None,
) -> nn.Module:
    """Train `net` in place with the classic schedule and return it.

    Runs ``epochs + 1`` epochs. Epochs ``0 .. epochs//2 + 1`` use `lr`; after epoch
    ``epochs//2 + 1`` the lr is multiplied by 0.1 and the SGD optimiser is re-created, which
    also resets momentum (the official ``lr_schedule = [Epoch//2 + 1]``). Soft (N, K) labels use
    soft cross-entropy. ``on_epoch(epoch, optimizer)`` is called before each epoch with the
    optimiser that epoch uses (for logging and tests).

    Example:
        >>> train_network(net, x, y, lr=0.01, epochs=300, dsa=DSA(),
        ...               generator=torch.Generator().manual_seed(0))     # doctest: +SKIP
    """
    if not lr > 0:
        raise ConfigError(f"lr must be positive, got {lr}; pass the learned lr or 0.01")
    net.to(device).train()
    # Detached: distilled images/labels may be leaves with requires_grad. Moved once.
    x, y = images.detach().to(device), labels.detach().to(device)
    loss_fn = _loss_for(y)
    decay_after = epochs // 2 + 1
    opt = _sgd(net, lr, momentum, weight_decay)
    for epoch in progress_bar(range(epochs + 1), enabled=progress, desc="train", leave=False):
        if on_epoch is not None:
            on_epoch(epoch, opt)
        _train_epoch(net, x, y, opt, loss_fn, batch_size, dsa, generator)
        if epoch == decay_after:
            opt = _sgd(net, lr * 0.1, momentum, weight_decay)  # fresh state: momentum reset
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
    labels = hard_labels_from(labels)
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


# ----------------------------------------------------------------------------- one run


def run_seeds(seed: int, run: int) -> tuple[int, int]:
    """(init seed, training seed) of run `run`, independent across (seed, run) pairs."""
    a, b = np.random.SeedSequence([seed, run]).generate_state(2)
    return int(a), int(b)


def make_dsa(strategy: str | None) -> DSA | None:
    """DSA for `strategy`; None, "" or "none" turn augmentation off."""
    if strategy is None or strategy.lower() in ("", "none"):
        return None
    return DSA(strategy)


def train_and_test(
    images: torch.Tensor,
    labels: torch.Tensor,
    test: ImageSet,
    *,
    model: str,
    lr: float,
    epochs: int,
    batch_size: int = 256,
    dsa: DSA | None = None,
    seed: int = 0,
    run: int = 0,
    device: str | torch.device = "cpu",
    model_kwargs: dict | None = None,
    progress: bool = False,
    on_epoch: EpochHook | None = None,
) -> float:
    """One classic run: a fresh seeded network, trained on (images, labels), tested once.

    The network is initialised inside ``torch.random.fork_rng`` so the caller's global RNG
    state is left untouched.
    """
    info = test.info
    init_seed, train_seed = run_seeds(seed, run)
    with torch.random.fork_rng(devices=[]):  # models are built on CPU (factories never move)
        torch.manual_seed(init_seed)
        net = create_model(
            model, info.channels, info.num_classes, info.image_size, **(model_kwargs or {})
        )
    gen = torch.Generator().manual_seed(train_seed)
    train_network(
        net,
        images,
        labels,
        lr=lr,
        epochs=epochs,
        batch_size=batch_size,
        dsa=dsa,
        generator=gen,
        device=device,
        progress=progress,
        on_epoch=on_epoch,
    )
    return test_accuracy(net, test.images, test.labels, device=device)


# ----------------------------------------------------------------------------- protocols


def _check_inputs(images: torch.Tensor, labels: torch.Tensor | None, test: ImageSet) -> None:
    check_finite(images, "the images to evaluate")
    if labels is not None and labels.dim() == 2:
        check_finite(labels, "the soft labels to evaluate")
    info = test.info
    expect = (info.channels, *info.image_size)
    if images.dim() != 4 or tuple(images.shape[1:]) != expect:
        raise CompatibilityError(
            f"images have shape {tuple(images.shape)} but the test set {info.name!r} has "
            f"(N, {expect[0]}, {expect[1]}, {expect[2]}); evaluate on the dataset the set was "
            "distilled from"
        )
    if labels is None:
        return
    n, k = images.shape[0], info.num_classes
    ok = (labels.dim() == 1 and labels.shape[0] == n) or (
        labels.dim() == 2 and tuple(labels.shape) == (n, k)
    )
    if not ok:
        raise CompatibilityError(
            f"labels have shape {tuple(labels.shape)}; expected ({n},) "
            f"class indices or ({n}, {k}) soft logits"
        )
    if labels.dim() == 1:
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise CompatibilityError(
                f"hard labels must be integer class indices, got dtype {labels.dtype}; "
                "convert them with labels.long() (or pass (N, K) soft logits)"
            )
        if n and (int(labels.min()) < 0 or int(labels.max()) >= k):
            raise CompatibilityError(
                f"hard labels span [{int(labels.min())}, {int(labels.max())}] but {info.name!r} "
                f"has classes 0..{k - 1}; evaluate on the dataset the set was distilled from"
            )


def challenge_labels(num_classes: int, ipc: int) -> torch.Tensor:
    """The challenge's implied labels: [0]*ipc + [1]*ipc + ... as (classes*ipc,) int64."""
    return torch.arange(num_classes).repeat_interleave(ipc)


def _challenge_setup(
    images: torch.Tensor,
    labels: torch.Tensor | None,
    test: ImageSet,
    ipc: int | None,
    lr: float | None,
) -> torch.Tensor:
    """Check a challenge submission and return its implied labels."""
    k, n = test.info.num_classes, images.shape[0]
    ipc = ipc if ipc is not None else n // k
    if ipc < 1 or n != ipc * k:
        raise CompatibilityError(
            f"challenge: {n} images but ipc {ipc} x {k} classes = "
            f"{ipc * k}; submit exactly ipc images per class, class-major"
        )
    if test.space == "zca":
        raise CompatibilityError(
            "challenge: the test set is in ZCA space; the challenge "
            "evaluates normalised pixels, prepare the data without ZCA"
        )
    implied = challenge_labels(k, ipc)
    if labels is not None and not torch.equal(hard_labels_from(labels).cpu(), implied):
        log.warning(
            "challenge: the given labels are ignored; they disagree with the implied "
            "class-major order [0]*%d + [1]*%d + ...",
            ipc,
            ipc,
        )
    if lr is not None and lr != DEFAULT_LR:
        log.warning("challenge: the lr is fixed at %g; ignoring lr=%g", DEFAULT_LR, lr)
    return implied


def evaluate(
    images: torch.Tensor,
    labels: torch.Tensor | None,
    test: ImageSet,
    *,
    protocol: str = "classic",
    model: str = "convnet",
    lr: float | None = None,
    num_runs: int | None = None,
    epochs: int = 1000,
    batch_size: int = 256,
    seed: int = 0,
    device: str | torch.device = "cpu",
    dsa_strategy: str | None = None,
    progress: bool = False,
    model_kwargs: dict | None = None,
    ipc: int | None = None,
    cache: RunCache | None = None,
) -> EvalReport:
    """Train `num_runs` fresh networks on (images, labels) and test them on `test`.

    `num_runs` defaults to 5 (classic) or 3 (challenge); `dsa_strategy` to the dataset's
    (``"none"`` turns DSA off). For "challenge", labels are implied by order (`labels` may be
    None) and `ipc` defaults to N / classes. With a :class:`~datadistill.runlog.RunCache`,
    each finished run is stored as it ends and runs already stored are not trained again.

    Example:
        >>> evaluate(ds.images, ds.labels, real.test, lr=ds.lr, epochs=300)  # doctest: +SKIP
    """
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {protocol!r}; use one of {PROTOCOLS}")
    _check_inputs(images, labels, test)
    model_kwargs = dict(model_kwargs or {})
    if protocol == "challenge":
        labels = _challenge_setup(images, labels, test, ipc, lr)
        lr, model_kwargs["depth"] = DEFAULT_LR, 3  # ConvNet-3 even at 64 px
        if model != "convnet":
            log.warning("challenge: the model is fixed to convnet; ignoring model=%r", model)
            model = "convnet"
    elif labels is None:
        raise ConfigError("classic protocol needs labels; pass hard (N,) or soft (N, K) labels")
    lr = DEFAULT_LR if lr is None else float(lr)
    num_runs = DEFAULT_RUNS[protocol] if num_runs is None else num_runs
    check_training(lr=lr, num_runs=num_runs, epochs=epochs, batch_size=batch_size)
    strategy = test.info.dsa_strategy if dsa_strategy is None else dsa_strategy
    dsa = make_dsa(strategy)
    x, y = images.detach().to(device), labels.detach().to(device)  # moved once for all runs
    test_dev = test.to(device)
    accs, seconds = [], []
    setup = dict(protocol=protocol, model=model, lr=lr, epochs=epochs, batch_size=batch_size,
                 seed=seed, device=str(device), dsa=strategy, model_kwargs=model_kwargs)
    fp = None if cache is None else fingerprint(x, y, setup)
    for run in progress_bar(range(num_runs), enabled=progress, desc=f"evaluate {model}",
                            leave=False, stage=True):
        done = cache.get(fp, run) if cache else None
        if done is not None:  # finished by an earlier, interrupted call
            accs.append(done[0])
            seconds.append(done[1])
            continue
        start = time.perf_counter()
        acc = train_and_test(
            x,
            y,
            test_dev,
            model=model,
            lr=lr,
            epochs=epochs,
            batch_size=batch_size,
            dsa=dsa,
            seed=seed,
            run=run,
            device=device,
            model_kwargs=model_kwargs,
            progress=progress,
        )
        log.info("%s %s run %d/%d: test accuracy %.4f", protocol, model, run + 1, num_runs, acc)
        accs.append(acc)
        seconds.append(round(time.perf_counter() - start, 3))
        if cache:
            cache.put(fp, run, acc, seconds[-1])
    settings = {
        "dataset": test.info.name,
        "space": test.space,
        "n_images": int(images.shape[0]),
        "labels": "soft" if y.dim() == 2 else "hard",
        "lr": lr,
        "epochs": epochs,
        "epochs_run": epochs + 1,
        "lr_decay_after_epoch": epochs // 2 + 1,
        "batch_size": batch_size,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "dsa_strategy": strategy if dsa is not None else None,
        "num_runs": num_runs,
        "seed": seed,
        "model_kwargs": model_kwargs,
        "device": str(device),
        "seconds_per_run": seconds,
    }
    if protocol == "challenge":
        settings["ipc"] = int(images.shape[0]) // test.info.num_classes
    return EvalReport.from_accuracies(protocol, model, accs, settings)


def evaluate_cross(
    images: torch.Tensor,
    labels: torch.Tensor,
    test: ImageSet,
    *,
    models: Sequence[str] = CROSS_MODELS,
    **kwargs: Any,
) -> dict[str, EvalReport]:
    """Classic evaluation on each architecture in `models` (MTT's cross-architecture table).

    Example:
        >>> reports = evaluate_cross(x, y, real.test,
        ...                          models=["convnet", "resnet18"])     # doctest: +SKIP
    """
    return {name: evaluate(images, labels, test, model=name, **kwargs) for name in models}


def evaluate_distilled(
    ds: Any, test: ImageSet, *, hard_labels: bool = False, **kwargs: Any
) -> EvalReport:
    """Evaluate a :class:`~datadistill.artifact.DistilledSet` with its learned lr.

    `hard_labels=True` evaluates a soft-label set with its argmax classes (DD-Ranking's
    hard-label accuracy).

    Example:
        >>> evaluate_distilled(load_distilled("runs/mtt"), real.test)      # doctest: +SKIP
    """
    if ds.space != test.space:
        raise CompatibilityError(
            f"the set lives in {ds.space!r} space but the test set in "
            f"{test.space!r}; prepare the data with zca={ds.space == 'zca'}"
        )
    labels = hard_labels_from(ds.labels) if hard_labels else ds.labels
    if kwargs.get("protocol") == "challenge":  # fixed lr; labels implied by ipc
        kwargs.setdefault("ipc", ds.ipc)
    else:
        kwargs.setdefault("lr", ds.lr)
    return evaluate(ds.images, labels, test, **kwargs)
