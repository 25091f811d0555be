"""The classic protocol's training: one fresh network per run, trained on a set and tested.

The DC/DSA/MTT/DATM ``evaluate_synset`` loop: SGD momentum 0.9, weight decay 5e-4, the set's
learned lr (else 0.01), ``epochs + 1`` epochs (1000 -> 1001 as in the official loop), lr x0.1
after epoch ``epochs // 2 + 1`` with the optimiser re-created (momentum reset), batch 256, DSA
on every batch, hard labels -> cross-entropy, soft (N, K) logits -> soft cross-entropy (DATM),
test accuracy once at the end (or after every `period` epochs too).

Options of many keywords are bundled in frozen dataclasses (:class:`TrainOptions`,
:class:`RunOptions`); the functions take the object, or its fields as keywords.

Example:
    >>> curve = train_and_test_curve(x, y, real.test, model="convnet", lr=0.01,
    ...                              epochs=300, period=100)                # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from datadistill import distributed
from datadistill.checks import check_finite
from datadistill.data import ImageSet
from datadistill.data.augment import DSA
from datadistill.errors import CompatibilityError, ConfigError, DivergenceError
from datadistill.labels import is_soft, label_loss
from datadistill.runtime.progress import plural
from datadistill.training import (
    FitHooks,
    FitOptions,
    build_model,
    fit,
    images_only,
    run_seeds,
    test_accuracy,
)

DEFAULT_LR = 0.01  # DC/DSA lr_net and the challenge's fixed lr
MOMENTUM, WEIGHT_DECAY = 0.9, 5e-4  # the classic protocol's SGD (DC/DSA/MTT/DATM)

EpochHook = Callable[[int, torch.optim.Optimizer], None]
T = TypeVar("T")


def with_options(cls: type[T], options: T | None, overrides: dict[str, Any], fn: str) -> T:
    """`options` (default: `cls` built from `overrides`) with `overrides` replacing its fields;
    an unknown keyword is the TypeError a signature would raise.

    Example:
        >>> with_options(RunOptions, None, {"model": "convnet", "lr": 0.1, "epochs": 2}, "f").lr
        0.1
    """
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise TypeError(f"{fn}() got an unexpected keyword argument {unknown[0]!r}")
    if options is None:
        return cls(**overrides)
    return dataclasses.replace(options, **overrides)  # type: ignore[type-var]


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
            f"{self.model} ({self.protocol}): {100 * self.mean:.2f} ± "
            f"{100 * self.std:.2f} % over {plural(len(self.accuracies), 'run')}"
        )


# ----------------------------------------------------------------------------- train


@dataclass(frozen=True)
class TrainOptions:
    """How :func:`train_network` trains: lr, epochs and the classic loop's settings."""

    lr: float
    epochs: int
    batch_size: int = 256
    dsa: DSA | None = None
    generator: torch.Generator | None = None
    device: str | torch.device = "cpu"
    momentum: float = MOMENTUM
    weight_decay: float = WEIGHT_DECAY
    progress: bool = False
    on_epoch: EpochHook | None = None


def _sgd(net: nn.Module, lr: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    return torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)


def _classic_decay(decay_after: int, lr: float, net: nn.Module, momentum: float,
                   weight_decay: float):
    """The classic schedule: after epoch ``decay_after`` a fresh SGD at lr x 0.1."""

    def schedule(epoch: int, opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
        if epoch == decay_after:
            return _sgd(net, lr * 0.1, momentum, weight_decay)  # fresh state: momentum reset
        return opt

    return schedule


def train_network(net: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                  options: TrainOptions | None = None, **overrides: Any) -> nn.Module:
    """Train `net` in place with the classic schedule and return it.

    `options` (or its fields as keywords: ``lr``, ``epochs``, ``batch_size``, ``dsa``,
    ``generator``, ``device``, ``momentum``, ``weight_decay``, ``progress``, ``on_epoch``).
    Runs ``epochs + 1`` epochs. Epochs ``0 .. epochs//2 + 1`` use `lr`; after epoch
    ``epochs//2 + 1`` the lr is multiplied by 0.1 and the SGD optimiser is re-created, which
    also resets momentum (the official ``lr_schedule = [Epoch//2 + 1]``). Soft (N, K) labels use
    soft cross-entropy. ``on_epoch(epoch, optimizer)`` is called before each epoch with the
    optimiser that epoch uses (for logging and tests).

    Example:
        >>> train_network(net, x, y, lr=0.01, epochs=300, dsa=DSA(),
        ...               generator=torch.Generator().manual_seed(0))     # doctest: +SKIP
    """
    o = with_options(TrainOptions, options, overrides, "train_network")
    if not o.lr > 0:
        raise ConfigError(f"lr must be positive, got {o.lr}; pass the learned lr or 0.01")
    # Detached: distilled images/labels may be leaves with requires_grad. Moved once.
    x, y = images.detach().to(o.device), labels.detach().to(o.device)
    return fit(
        net, x, y, _sgd(net, o.lr, o.momentum, o.weight_decay),
        FitOptions(epochs=o.epochs + 1, batch_size=o.batch_size, device=o.device,
                   progress=o.progress, desc="train"),
        FitHooks(loss=label_loss(y), augment=None if o.dsa is None else images_only(o.dsa),
                 schedule=_classic_decay(o.epochs // 2 + 1, o.lr, net, o.momentum,
                                         o.weight_decay),
                 before_epoch=o.on_epoch),
        generator=o.generator,
    )


# ----------------------------------------------------------------------------- one run


def make_dsa(strategy: str | None) -> DSA | None:
    """DSA for `strategy`; None, "" or "none" turn augmentation off."""
    if strategy is None or strategy.lower() in ("", "none"):
        return None
    return DSA(strategy)


def build_network(
    model: str, info: Any, init_seed: int, model_kwargs: dict | None = None
) -> nn.Module:
    """A fresh `model` for dataset `info`, initialised from `init_seed` on the CPU
    (:func:`datadistill.training.build_model`; the caller's global RNG is left untouched).

    Example:
        >>> net = build_network("convnet", real.info, init_seed=0)          # doctest: +SKIP
    """
    return build_model(model, info, init_seed, model_kwargs=model_kwargs)


@dataclass
class RunCurve:
    """Test accuracies (fractions) of one run after the tested epochs (the last is the end)."""

    epochs: list[int] = field(default_factory=list)
    accuracies: list[float] = field(default_factory=list)

    @property
    def last(self) -> float:
        return self.accuracies[-1]

    @property
    def best(self) -> float:
        return max(self.accuracies)


@dataclass(frozen=True)
class RunOptions:
    """One classic run: the network, its training and which tests it records."""

    model: str
    lr: float
    epochs: int
    period: int | None = None  # test every `period` epochs (None: only at the end)
    batch_size: int = 256
    dsa: DSA | None = None
    seed: int = 0
    run: int = 0
    device: str | torch.device = "cpu"
    model_kwargs: dict | None = None
    progress: bool = False
    on_epoch: EpochHook | None = None


def train_and_test_curve(images: torch.Tensor, labels: torch.Tensor, test: ImageSet,
                         options: RunOptions | None = None, **overrides: Any) -> RunCurve:
    """One classic run, tested after every `period` epochs (None: only at the end) and at the end.

    `options` (or its fields as keywords, :class:`RunOptions`). Periodic tests read the
    network without touching the training RNG, so the last accuracy equals
    :func:`train_and_test`'s for the same seeds.

    Example:
        >>> curve = train_and_test_curve(x, y, real.test, model="convnet", lr=0.01,
        ...                              epochs=300, period=100)            # doctest: +SKIP
        >>> curve.epochs                                                    # doctest: +SKIP
        [100, 200, 300, 301]
    """
    o = with_options(RunOptions, options, overrides, "train_and_test_curve")
    init_seed, train_seed = run_seeds(o.seed, o.run)
    net = build_network(o.model, test.info, init_seed, o.model_kwargs)
    gen = torch.Generator().manual_seed(train_seed)
    curve = RunCurve()

    def hook(epoch: int, opt: torch.optim.Optimizer) -> None:
        # Called before epoch `epoch`: the network has trained `epoch` epochs.
        if o.period and epoch and epoch % o.period == 0:
            curve.epochs.append(epoch)
            curve.accuracies.append(test_accuracy(net, test.images, test.labels, device=o.device))
        if o.on_epoch is not None:
            o.on_epoch(epoch, opt)

    train_network(net, images, labels, lr=o.lr, epochs=o.epochs, batch_size=o.batch_size,
                  dsa=o.dsa, generator=gen, device=o.device, progress=o.progress, on_epoch=hook)
    if not all(bool(torch.isfinite(p).all()) for p in net.parameters()):
        # a diverged network predicts one class: its "accuracy" is chance, not a result
        raise DivergenceError(f"evaluation run {o.run} diverged: the network's weights are "
                              f"NaN/Inf after training at lr {o.lr:g}; check the set's pixel "
                              "values or lower the learning rate (--lr)")
    curve.epochs.append(o.epochs + 1)
    curve.accuracies.append(test_accuracy(net, test.images, test.labels, device=o.device))
    return curve


def train_and_test(images: torch.Tensor, labels: torch.Tensor, test: ImageSet,
                   **kwargs: Any) -> float:
    """One classic run: a fresh seeded network, trained on (images, labels), tested once.

    Takes :func:`train_and_test_curve`'s keywords (without `period`). The network is
    initialised under :func:`~datadistill.training.seeded`, so the caller's global RNG state
    is left untouched.
    """
    return train_and_test_curve(images, labels, test, **kwargs).last


def classic_settings(test: ImageSet, run: RunOptions, *, num_runs: int,
                     dsa_strategy: str | None) -> dict:
    """The classic protocol's settings as an EvalReport records them: those of `run` (its
    model, seed and run index aside), `num_runs` and the DSA strategy used (None: off)."""
    return {
        "dataset": test.info.name,
        "space": test.space,
        "lr": run.lr,
        "epochs": run.epochs,
        "epochs_run": run.epochs + 1,
        "lr_decay_after_epoch": run.epochs // 2 + 1,
        "batch_size": run.batch_size,
        "momentum": MOMENTUM,
        "weight_decay": WEIGHT_DECAY,
        "dsa_strategy": dsa_strategy,
        "num_runs": num_runs,
        "seed": run.seed,
        "model_kwargs": dict(run.model_kwargs or {}),
        "device": str(run.device),
        **distributed.metadata(),  # how many processes shared the runs
    }


# ----------------------------------------------------------------------------- inputs


def check_inputs(images: torch.Tensor, labels: torch.Tensor | None, test: ImageSet) -> None:
    """The images are finite and of the test split's shape; labels (when given) are (N,)
    class indices of its classes or finite (N, K) soft logits."""
    check_finite(images, "the images to evaluate")
    if labels is not None and is_soft(labels):
        check_finite(labels, "the soft labels to evaluate")
    info = test.info
    problem = info.shape_problem(images, of="the test set")
    if problem:
        raise CompatibilityError(f"{problem}; evaluate on the dataset the set was distilled from")
    if labels is None:
        return
    n, k = images.shape[0], info.num_classes
    ok = (labels.dim() == 1 and labels.shape[0] == n) or (
        is_soft(labels) and tuple(labels.shape) == (n, k)
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


def check_space(space: str | None, test: ImageSet) -> None:
    """Refuse images in another space than the test split: a normalised set tested on
    ZCA-whitened images loses about 7 points on digits without any error. ``space`` None
    (not recorded) is taken as normalised, which a ZCA-whitened split cannot confirm."""
    if space is None and test.space == "zca":
        raise CompatibilityError(
            "the test split is ZCA-whitened but the images' space is not given; pass "
            "space=ds.space (a saved set records it), space='zca' for whitened images, or "
            "prepare the data with zca=False for normalised ones")
    if space is not None and space != test.space:
        raise CompatibilityError(
            f"the set lives in {space!r} space but the test split in {test.space!r}; "
            f"prepare the data with zca={space == 'zca'}")
