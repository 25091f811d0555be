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
    >>> report = evaluate(ds.images, ds.labels, real.test, lr=ds.lr,
    ...                   space=ds.space)                                  # doctest: +SKIP
    >>> print(report)                                                      # doctest: +SKIP
    convnet (classic): 65.12 ± 0.31 % over 5 runs
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from datadistill import distributed
from datadistill.checks import check_finite, check_training
from datadistill.data import ImageSet
from datadistill.data.augment import DSA
from datadistill.errors import CompatibilityError, ConfigError, DivergenceError
from datadistill.evaluation.challenge import challenge_violations, refuse_unofficial
from datadistill.labels import hard_labels as hard_labels_of
from datadistill.labels import is_soft, label_loss
from datadistill.matching.soft_labels import soft_cross_entropy  # noqa: F401  re-exported
from datadistill.runs import Cached, Run, RunResults, Show, run_all
from datadistill.runtime.progress import plural
from datadistill.runtime.runlog import RunCache, fingerprint
from datadistill.training import (  # noqa: F401  test_accuracy, run_seeds: re-exported
    FitHooks,
    FitOptions,
    build_model,
    fit,
    images_only,
    run_seeds,
    test_accuracy,
)

log = logging.getLogger(__name__)

PROTOCOLS = ("classic", "challenge")  # what evaluate() runs on one set
RUN_PROTOCOLS = (*PROTOCOLS, "ddranking")  # a run's evaluation.protocols: + DD-Ranking's scores
DEFAULT_LR = 0.01  # DC/DSA lr_net and the challenge's fixed lr
DEFAULT_RUNS = {"classic": 5, "challenge": 3}
MOMENTUM, WEIGHT_DECAY = 0.9, 5e-4  # the classic protocol's SGD (DC/DSA/MTT/DATM)
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
            f"{self.model} ({self.protocol}): {100 * self.mean:.2f} ± "
            f"{100 * self.std:.2f} % over {plural(len(self.accuracies), 'run')}"
        )


# ----------------------------------------------------------------------------- train


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
    momentum: float = MOMENTUM,
    weight_decay: float = WEIGHT_DECAY,
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
    # Detached: distilled images/labels may be leaves with requires_grad. Moved once.
    x, y = images.detach().to(device), labels.detach().to(device)
    return fit(
        net, x, y, _sgd(net, lr, momentum, weight_decay),
        FitOptions(epochs=epochs + 1, batch_size=batch_size, device=device, progress=progress,
                   desc="train"),
        FitHooks(loss=label_loss(y), augment=None if dsa is None else images_only(dsa),
                 schedule=_classic_decay(epochs // 2 + 1, lr, net, momentum, weight_decay),
                 before_epoch=on_epoch),
        generator=generator,
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


def train_and_test_curve(
    images: torch.Tensor,
    labels: torch.Tensor,
    test: ImageSet,
    *,
    model: str,
    lr: float,
    epochs: int,
    period: int | None = None,
    batch_size: int = 256,
    dsa: DSA | None = None,
    seed: int = 0,
    run: int = 0,
    device: str | torch.device = "cpu",
    model_kwargs: dict | None = None,
    progress: bool = False,
    on_epoch: EpochHook | None = None,
) -> RunCurve:
    """One classic run, tested after every `period` epochs (None: only at the end) and at the end.

    Periodic tests read the network without touching the training RNG, so the last accuracy
    equals :func:`train_and_test`'s for the same seeds.

    Example:
        >>> curve = train_and_test_curve(x, y, real.test, model="convnet", lr=0.01,
        ...                              epochs=300, period=100)            # doctest: +SKIP
        >>> curve.epochs                                                    # doctest: +SKIP
        [100, 200, 300, 301]
    """
    init_seed, train_seed = run_seeds(seed, run)
    net = build_network(model, test.info, init_seed, model_kwargs)
    gen = torch.Generator().manual_seed(train_seed)
    curve = RunCurve()

    def hook(epoch: int, opt: torch.optim.Optimizer) -> None:
        # Called before epoch `epoch`: the network has trained `epoch` epochs.
        if period and epoch and epoch % period == 0:
            curve.epochs.append(epoch)
            curve.accuracies.append(test_accuracy(net, test.images, test.labels, device=device))
        if on_epoch is not None:
            on_epoch(epoch, opt)

    train_network(net, images, labels, lr=lr, epochs=epochs, batch_size=batch_size, dsa=dsa,
                  generator=gen, device=device, progress=progress, on_epoch=hook)
    if not all(bool(torch.isfinite(p).all()) for p in net.parameters()):
        # a diverged network predicts one class: its "accuracy" is chance, not a result
        raise DivergenceError(f"evaluation run {run} diverged: the network's weights are NaN/Inf "
                              f"after training at lr {lr:g}; check the set's pixel values or "
                              "lower the learning rate (--lr)")
    curve.epochs.append(epochs + 1)
    curve.accuracies.append(test_accuracy(net, test.images, test.labels, device=device))
    return curve


def train_and_test(images: torch.Tensor, labels: torch.Tensor, test: ImageSet,
                   **kwargs: Any) -> float:
    """One classic run: a fresh seeded network, trained on (images, labels), tested once.

    Takes :func:`train_and_test_curve`'s keywords (without `period`). The network is
    initialised under :func:`~datadistill.training.seeded`, so the caller's global RNG state
    is left untouched.
    """
    return train_and_test_curve(images, labels, test, **kwargs).last


# ----------------------------------------------------------------------------- protocols


def _check_inputs(images: torch.Tensor, labels: torch.Tensor | None, test: ImageSet) -> None:
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


SOFT_REPLACED = ("the set's soft labels are not used: the challenge trains on class-order hard "
                 "labels [0]*ipc + [1]*ipc + ... (it scores images only)")


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
    if labels is not None and is_soft(labels):
        log.warning("challenge: %s", SOFT_REPLACED)
    elif labels is not None and not torch.equal(hard_labels_of(labels).cpu(), implied):
        log.warning(
            "challenge: the given labels are ignored; they disagree with the implied "
            "class-major order [0]*%d + [1]*%d + ...",
            ipc,
            ipc,
        )
    if lr is not None and lr != DEFAULT_LR:
        log.warning("challenge: the lr is fixed at %g; ignoring lr=%g", DEFAULT_LR, lr)
    return implied


def _challenge_violations(images, test, epochs, num_runs, dsa, strategy, batch_size,
                          unofficial: bool) -> list:
    """The settings that differ from the official evaluator; an error unless `unofficial`."""
    info = test.info
    violations = challenge_violations(
        tuple(images.shape), info.name, test.space, ipc=images.shape[0] // info.num_classes,
        epochs=epochs, num_runs=num_runs, dsa_strategy=strategy if dsa is not None else None,
        batch_size=batch_size, mean=info.mean, std=info.std,
    )
    if not unofficial:
        refuse_unofficial(violations)
    return violations


def evaluate(
    images: torch.Tensor, labels: torch.Tensor | None, test: ImageSet, *,
    protocol: str = "classic", model: str = "convnet", lr: float | None = None,
    num_runs: int | None = None, epochs: int = 1000, batch_size: int = 256, seed: int = 0,
    device: str | torch.device = "cpu", dsa_strategy: str | None = None, progress: bool = False,
    model_kwargs: dict | None = None, ipc: int | None = None, report: str = "last",
    period: int | None = 100, unofficial: bool = False, cache: RunCache | None = None,
    space: str | None = None,
) -> EvalReport:
    """Train `num_runs` fresh networks on (images, labels) and test them on `test`.

    `report`: ``"last"`` (the official loop: one test after the last epoch), ``"best_of_periodic"``
    (the best of the tests after every `period` epochs and after the last, as MTT/FTD report)
    or ``"both"`` (`accuracies` hold the last; ``settings["best_accuracies"]`` the best).
    Periodic tests do not change the training, so the last accuracies are the same in all modes.

    The challenge protocol is strict: any setting that differs from the official evaluator
    (:mod:`.challenge`) is an error naming it, unless `unofficial` is True; the
    report then lists them in ``settings["unofficial_settings"]`` (``settings["official"]``).

    `num_runs` defaults to 5 (classic) or 3 (challenge); `dsa_strategy` to the dataset's
    (``"none"`` turns DSA off). For "challenge", labels are implied by order (`labels` may be
    None) and `ipc` defaults to N / classes. With a :class:`~datadistill.runtime.runlog.RunCache`,
    each finished run is stored as it ends and runs already stored are not trained again.
    `space`: the images' space (``ds.space``), checked by :func:`check_space`.

    Example:
        >>> evaluate(ds.images, ds.labels, real.test, lr=ds.lr, space=ds.space)  # doctest: +SKIP
    """
    soft_replaced = protocol == "challenge" and labels is not None and is_soft(labels)
    if protocol != "challenge":  # a challenge file is normalised pixels: its own check
        check_space(space, test)
    labels, lr, model, model_kwargs = _protocol_setup(
        protocol, images, labels, test, lr=lr, model=model, model_kwargs=model_kwargs, ipc=ipc
    )
    num_runs = DEFAULT_RUNS[protocol] if num_runs is None else num_runs
    check_training(lr=lr, num_runs=num_runs, epochs=epochs, batch_size=batch_size)
    strategy = test.info.dsa_strategy if dsa_strategy is None else dsa_strategy
    dsa = make_dsa(strategy)
    violations = [] if protocol != "challenge" else _challenge_violations(
        images, test, epochs, num_runs, dsa, strategy, batch_size, unofficial)
    x, y, test_dev = images.detach().to(device), labels.detach().to(device), test.to(device)
    _check_report(report, period, protocol)
    kw = dict(model=model, lr=lr, epochs=epochs, batch_size=batch_size, dsa=dsa, seed=seed,
              device=device, model_kwargs=model_kwargs, progress=progress)
    # Only last-epoch runs are cached: a periodic report needs each run's whole test curve.
    fp = None if cache is None or report != "last" else fingerprint(x, y, dict(
        protocol=protocol, model=model, lr=lr, epochs=epochs, batch_size=batch_size,
        seed=seed, device=str(device), dsa=strategy, model_kwargs=model_kwargs))
    results = _runs(x, y, test_dev, num_runs, report, period, protocol, kw,
                    cache if fp else None, fp)
    settings = {"n_images": int(images.shape[0]), "labels": "soft" if is_soft(y) else "hard",
                **classic_settings(test, lr=lr, epochs=epochs, batch_size=batch_size,
                                   dsa_strategy=strategy if dsa is not None else None,
                                   num_runs=num_runs, seed=seed, model_kwargs=model_kwargs,
                                   device=device),
                "seconds_per_run": results.seconds,
                **({"labels_replaced": SOFT_REPLACED} if soft_replaced else {})}
    return _finish(protocol, model, report, period, results.values, settings, violations,
                   test.info.num_classes)


def _protocol_setup(
    protocol: str,
    images: torch.Tensor,
    labels: torch.Tensor | None,
    test: ImageSet,
    *,
    lr: float | None,
    model: str,
    model_kwargs: dict | None,
    ipc: int | None,
) -> tuple[torch.Tensor, float, str, dict]:
    """Check the inputs; (labels, lr, model, model_kwargs) as `protocol` fixes them."""
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
    return labels, DEFAULT_LR if lr is None else float(lr), model, model_kwargs


def classic_settings(test: ImageSet, *, lr: float, epochs: int, batch_size: int,
                     dsa_strategy: str | None, num_runs: int, seed: int,
                     model_kwargs: dict | None, device: Any) -> dict:
    """The classic protocol's settings as an EvalReport records them."""
    return {
        "dataset": test.info.name,
        "space": test.space,
        "lr": lr,
        "epochs": epochs,
        "epochs_run": epochs + 1,
        "lr_decay_after_epoch": epochs // 2 + 1,
        "batch_size": batch_size,
        "momentum": MOMENTUM,
        "weight_decay": WEIGHT_DECAY,
        "dsa_strategy": dsa_strategy,
        "num_runs": num_runs,
        "seed": seed,
        "model_kwargs": dict(model_kwargs or {}),
        "device": str(device),
        **distributed.metadata(),  # how many processes shared the runs
    }


def _finish(protocol: str, model: str, report: str, period: int | None, values: list,
            settings: dict, violations: list, num_classes: int) -> EvalReport:
    """The report from the runs' values: accuracies (report "last") or test curves."""
    if protocol == "challenge":
        settings["ipc"] = settings["n_images"] // num_classes
        settings["official"] = not violations
        settings["unofficial_settings"] = violations
    curves = [] if report == "last" else values
    accs = values if report == "last" else [c.last for c in curves]
    settings.update(_report_settings(report, period, curves))
    if report == "best_of_periodic":
        accs = [c.best for c in curves]
    return EvalReport.from_accuracies(protocol, model, accs, settings)


REPORTS = ("last", "best_of_periodic", "both")


def _runs(x, y, test, num_runs: int, report: str, period: int | None, protocol: str,
          kw: dict, cache: RunCache | None = None, fp: str | None = None) -> RunResults:
    """Last accuracies (report "last") or test curves of `num_runs` runs, with their seconds;
    runs already in `cache` (finished by an earlier, interrupted call) are not trained again."""

    def one_run(run: Run) -> float | RunCurve:
        if report == "last":
            return train_and_test(x, y, test, run=run.index, **kw)
        curve = train_and_test_curve(x, y, test, period=period, run=run.index, **kw)
        log.info("%s %s run %d/%d: test accuracy %.4f (best %.4f)", protocol, kw["model"],
                 run.index + 1, num_runs, curve.last, curve.best)
        return curve

    shown = Show(kw["progress"], f"evaluate {kw['model']}", f"{protocol} {kw['model']}")
    return run_all(num_runs, one_run, seed=kw["seed"], show=shown,
                   done=None if cache is None else Cached(cache, fp))


def _check_report(report: str, period: int | None, protocol: str) -> None:
    if report not in REPORTS:
        raise ConfigError(f"report={report!r}; choose from {REPORTS}")
    if report != "last" and protocol == "challenge":
        raise ConfigError("the challenge tests once at the end: use report='last'")
    if report != "last" and not (period and period >= 1):
        raise ConfigError(f"report={report!r} needs a test period >= 1 epochs, got {period}")


def _report_settings(report: str, period: int | None, curves: list[RunCurve]) -> dict:
    """What the report records: which accuracy `accuracies` holds, and the other one."""
    out: dict[str, Any] = {"report": report}
    if report == "last":
        return out
    best = [c.best for c in curves]
    out.update(
        period=period,
        tested_epochs=curves[0].epochs,
        curves=[c.accuracies for c in curves],
        best_accuracies=best,
        best_mean=float(np.mean(best)),
        best_std=float(np.std(best)),
        last_accuracies=[c.last for c in curves],
    )
    return out


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
    for name in models:  # every model must take the data before any network is trained
        check_model_fits(name, test.info, kwargs.get("model_kwargs"))
    return {name: evaluate(images, labels, test, model=name, **kwargs) for name in models}


def check_model_fits(model: str, info: Any, model_kwargs: dict | None = None) -> None:
    """Build `model` for dataset `info` and pass one blank image through it; raises the
    model's own error (naming the fix) when it cannot take the data."""
    net = build_model(model, info, 0, model_kwargs=model_kwargs).eval()
    with torch.no_grad():
        net(torch.zeros(1, info.channels, *info.image_size))


def evaluate_distilled(
    ds: Any, test: ImageSet, *, hard_labels: bool | str = False, **kwargs: Any
) -> EvalReport:
    """Evaluate a :class:`~datadistill.artifacts.distilled.DistilledSet` with its learned lr.

    `hard_labels` trains a soft-label set with hard labels: ``True`` or ``"argmax"`` (the
    argmax of its soft labels) or ``"class_order"`` (labels by the set's class-major order,
    what DD-Ranking trains).

    Example:
        >>> evaluate_distilled(load_distilled("runs/mtt"), real.test)      # doctest: +SKIP
    """
    labels = ds.labels
    if hard_labels == "class_order" and is_soft(labels):
        labels = challenge_labels(test.info.num_classes, ds.ipc).to(labels.device)
    elif hard_labels in (True, "argmax"):
        labels = hard_labels_of(ds.labels)
    elif hard_labels not in (False, None, "class_order"):
        raise ConfigError(f"hard_labels={hard_labels!r}; use 'argmax' or 'class_order'")
    if kwargs.get("protocol") == "challenge":  # fixed lr; labels implied by ipc
        kwargs.setdefault("ipc", ds.ipc)
    else:
        kwargs.setdefault("lr", ds.lr)
    return evaluate(ds.images, labels, test, space=ds.space, **kwargs)
