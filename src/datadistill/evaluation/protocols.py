"""Evaluation protocols: objects in one registry, :data:`PROTOCOLS` (name -> protocol).

Every protocol has the same interface: ``name``, a one-line ``summary``, ``section`` (the type
of its settings), ``settings(...)`` (its typed section, built from the values given) and
``evaluate(images, labels, data, settings, **run)`` (train fresh networks on a set, test them on
``data`` (the prepared dataset, ``datadistill.data.prepare``) and return a report with
``to_dict()``). Adding a protocol is one entry in :data:`PROTOCOLS`.

- ``"classic"`` (DC/DSA/MTT/DATM ``evaluate_synset``; :mod:`.classic`): SGD momentum 0.9,
  weight decay 5e-4, the set's learned lr (else 0.01), ``epochs + 1`` epochs, lr x0.1 after
  epoch ``epochs // 2 + 1`` (momentum reset), batch 256, DSA, hard labels -> cross-entropy,
  soft (N, K) logits -> soft cross-entropy (DATM); mean and std (ddof 0) over runs.
- ``"challenge"`` (ECCV-2024 track 1; :mod:`.challenge`): labels implied by class-major order,
  fixed lr 0.01, ConvNet depth 3 at any resolution, 3 runs, DSA, cross-entropy; strict.
- ``"ddranking"`` (:mod:`.ddranking`): HLR, IOR, LRS and ARS of a set, with its settings
  (``configs/_evaluation/ddranking.yaml``) per method.

:func:`evaluate` runs the classic or the challenge protocol on one set. Accuracies are
fractions in [0, 1].

Example:
    >>> real = prepare("cifar10")                                          # doctest: +SKIP
    >>> report = evaluate(ds.images, ds.labels, real.test, lr=ds.lr,
    ...                   space=ds.space)                                  # doctest: +SKIP
    >>> print(report)                                                      # doctest: +SKIP
    convnet (classic): 65.12 ± 0.31 %
    >>> PROTOCOLS["ddranking"].settings("mtt", rounds=3).rounds
    3
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np
import torch

from datadistill.checks import check_training
from datadistill.data import ImageSet
from datadistill.errors import CompatibilityError, ConfigError
from datadistill.evaluation.challenge import (
    ChallengeRun,
    challenge_labels,
    challenge_violations,
    refuse_unofficial,
)
from datadistill.evaluation.classic import (  # noqa: F401  re-exported
    DEFAULT_LR,
    MOMENTUM,
    WEIGHT_DECAY,
    EvalReport,
    RunCurve,
    RunOptions,
    TrainOptions,
    build_network,
    check_inputs,
    check_space,
    classic_settings,
    make_dsa,
    train_and_test,
    train_and_test_curve,
    train_network,
    with_options,
)
from datadistill.evaluation.ddranking import DDRankingConfig, DDRankingReport, preset_for, score
from datadistill.labels import hard_labels as hard_labels_of
from datadistill.labels import is_soft
from datadistill.matching.soft_labels import soft_cross_entropy  # noqa: F401  re-exported
from datadistill.runs import Cached, Run, RunResults, Show, run_all
from datadistill.runtime.runlog import RunCache, fingerprint
from datadistill.training import (  # noqa: F401  run_seeds, test_accuracy: re-exported
    build_model,
    run_seeds,
    test_accuracy,
)

log = logging.getLogger(__name__)

REPORTS = ("last", "best_of_periodic", "both")
# MTT's eval_mode 'M' pool for cross-architecture generalisation.
CROSS_MODELS = ("convnet", "alexnet", "vgg11", "resnet18_ap", "resnet18")
SOFT_REPLACED = ("the set's soft labels are not used: the challenge trains on class-order hard "
                 "labels [0]*ipc + [1]*ipc + ... (it scores images only)")


@dataclass(frozen=True)
class EvalOptions:
    """The settings section of the classic and challenge protocols: how :func:`evaluate`
    trains and reports (each field is also a keyword of :func:`evaluate`)."""

    protocol: str = "classic"
    model: str = "convnet"
    lr: float | None = None  # None: 0.01
    num_runs: int | None = None  # None: the protocol's (5 classic, 3 challenge)
    epochs: int = 1000
    batch_size: int = 256
    seed: int = 0
    device: str | torch.device = "cpu"
    dsa_strategy: str | None = None  # None: the dataset's; "none": off
    progress: bool = False
    model_kwargs: dict | None = None
    ipc: int | None = None  # challenge: images per class (None: N / classes)
    report: str = "last"  # last | best_of_periodic | both
    period: int | None = 100  # epochs between the periodic tests
    unofficial: bool = False  # challenge: score non-official settings (marked)
    cache: RunCache | None = None  # finished runs, stored as they end (report "last")
    space: str | None = None  # the images' space (ds.space), checked against the test split


class EvaluationProtocol(Protocol):
    """What every entry of :data:`PROTOCOLS` offers."""

    name: str  # its key in the registry and in reports
    summary: str  # one line: what it trains and reports
    section: ClassVar[type]  # the type of its settings

    def settings(self, *args: Any, **values: Any) -> Any:
        """Its typed settings section, built from `values`."""

    def evaluate(self, images: torch.Tensor, labels: torch.Tensor | None, data: Any,
                 settings: Any = None, **run: Any) -> Any:
        """Evaluate a set on the prepared dataset `data`; a report with ``to_dict()``."""


@dataclass(frozen=True)
class _Setup:
    """What a protocol fixes before training: labels, lr, model and extra report settings."""

    labels: torch.Tensor
    lr: float
    model: str
    model_kwargs: dict
    notes: dict


# ----------------------------------------------------------------------------- protocols


@dataclass(frozen=True)
class ClassicProtocol:
    """The classic protocol (:mod:`.classic`): fresh networks on the set, its labels and lr."""

    name: str = "classic"
    summary: str = "DC/DSA/MTT loop: SGD, 1000 + 1 epochs, lr x0.1 at half, DSA, 5 runs"
    default_runs: int = 5
    periodic_tests: bool = True  # report may be best_of_periodic / both
    section: ClassVar[type] = EvalOptions

    def settings(self, **values: Any) -> EvalOptions:
        """This protocol's section: :class:`EvalOptions` with `values`."""
        return EvalOptions(protocol=self.name, **values)

    def evaluate(self, images: torch.Tensor, labels: torch.Tensor | None, data: Any,
                 settings: EvalOptions | None = None, **run: Any) -> EvalReport:
        """:func:`evaluate` on ``data.test`` with `settings` (and `run`'s keywords) under
        this protocol."""
        options = with_options(EvalOptions, settings or self.settings(), run, "evaluate")
        return evaluate(images, labels, data.test, options, protocol=self.name)

    def setup(self, images: torch.Tensor, labels: torch.Tensor | None, test: ImageSet,
              o: EvalOptions) -> _Setup:
        """Check the inputs; the labels, lr and model this protocol trains with."""
        check_space(o.space, test)
        check_inputs(images, labels, test)
        if labels is None:
            raise ConfigError("classic protocol needs labels; pass hard (N,) or soft (N, K) "
                              "labels")
        lr = DEFAULT_LR if o.lr is None else float(o.lr)
        return _Setup(labels, lr, o.model, dict(o.model_kwargs or {}), {})

    def violations(self, images: torch.Tensor, test: ImageSet, run: ChallengeRun,
                   unofficial: bool) -> list[str]:
        return []

    def finish(self, settings: dict, violations: list[str], num_classes: int) -> None:
        """Protocol-specific entries of the report's settings (none here)."""

    def run(self, images: torch.Tensor, labels: torch.Tensor | None, test: ImageSet,
            o: EvalOptions) -> EvalReport:
        """Train `o.num_runs` networks on (images, labels) and test them on `test`."""
        s = self.setup(images, labels, test, o)
        num_runs = self.default_runs if o.num_runs is None else o.num_runs
        check_training(lr=s.lr, num_runs=num_runs, epochs=o.epochs, batch_size=o.batch_size)
        strategy = test.info.dsa_strategy if o.dsa_strategy is None else o.dsa_strategy
        dsa = make_dsa(strategy)
        used = strategy if dsa is not None else None
        violations = self.violations(images, test, ChallengeRun(
            images.shape[0] // test.info.num_classes, o.epochs, num_runs, used, o.batch_size),
            o.unofficial)
        x, y, test_dev = images.detach().to(o.device), s.labels.detach().to(o.device), test.to(
            o.device)
        self.check_report(o.report, o.period)
        run = RunOptions(model=s.model, lr=s.lr, epochs=o.epochs, batch_size=o.batch_size,
                         dsa=dsa, seed=o.seed, device=o.device, model_kwargs=s.model_kwargs,
                         progress=o.progress)
        # Only last-epoch runs are cached: a periodic report needs each run's whole test curve.
        fp = None if o.cache is None or o.report != "last" else fingerprint(x, y, dict(
            protocol=self.name, model=s.model, lr=s.lr, epochs=o.epochs,
            batch_size=o.batch_size, seed=o.seed, device=str(o.device), dsa=strategy,
            model_kwargs=s.model_kwargs))
        results = _runs(x, y, test_dev, run, o, num_runs, fp)
        settings = {"n_images": int(images.shape[0]), "labels": "soft" if is_soft(y) else "hard",
                    **classic_settings(test, run, num_runs=num_runs, dsa_strategy=used),
                    "seconds_per_run": results.seconds, **s.notes}
        self.finish(settings, violations, test.info.num_classes)
        return _report(self.name, s.model, o, results.values, settings)

    def check_report(self, report: str, period: int | None) -> None:
        if report not in REPORTS:
            raise ConfigError(f"report={report!r}; choose from {REPORTS}")
        if report != "last" and not self.periodic_tests:
            raise ConfigError(f"the {self.name} tests once at the end: use report='last'")
        if report != "last" and not (period and period >= 1):
            raise ConfigError(f"report={report!r} needs a test period >= 1 epochs, got {period}")


@dataclass(frozen=True)
class ChallengeProtocol(ClassicProtocol):
    """The ECCV-2024 challenge (:mod:`.challenge`): labels by class-major order, lr 0.01,
    ConvNet-3, 3 runs; any other official setting is an error unless ``unofficial``."""

    name: str = "challenge"
    summary: str = "ECCV-2024 challenge: class-order labels, lr 0.01, ConvNet-3, 3 runs, strict"
    default_runs: int = 3
    periodic_tests: bool = False

    def setup(self, images: torch.Tensor, labels: torch.Tensor | None, test: ImageSet,
              o: EvalOptions) -> _Setup:
        # a challenge file is normalised pixels: its own check of the space (below)
        notes = {"labels_replaced": SOFT_REPLACED} if labels is not None and is_soft(
            labels) else {}
        check_inputs(images, labels, test)
        lr, model_kwargs = o.lr, dict(o.model_kwargs or {})
        labels = _challenge_labels(images, labels, test, o.ipc, lr)  # warns of a given lr
        lr, model_kwargs["depth"] = DEFAULT_LR, 3  # ConvNet-3 even at 64 px
        model = o.model
        if model != "convnet":
            log.warning("challenge: the model is fixed to convnet; ignoring model=%r", model)
            model = "convnet"
        return _Setup(labels, DEFAULT_LR if lr is None else float(lr), model, model_kwargs,
                      notes)

    def violations(self, images: torch.Tensor, test: ImageSet, run: ChallengeRun,
                   unofficial: bool) -> list[str]:
        """The settings that differ from the official evaluator; an error unless `unofficial`."""
        info = test.info
        found = challenge_violations(tuple(images.shape), info.name, test.space, run,
                                     mean=info.mean, std=info.std)
        if not unofficial:
            refuse_unofficial(found)
        return found

    def finish(self, settings: dict, violations: list[str], num_classes: int) -> None:
        settings["ipc"] = settings["n_images"] // num_classes
        settings["official"] = not violations
        settings["unofficial_settings"] = violations


@dataclass(frozen=True)
class DDRankingProtocol:
    """DD-Ranking's scores (:mod:`.ddranking`); its settings are a method's preset
    (``configs/_evaluation/ddranking.yaml``) with overrides."""

    name: str = "ddranking"
    summary: str = "DD-Ranking: HLR, IOR, LRS and ARS against a random subset and the full data"
    section: ClassVar[type] = DDRankingConfig

    def settings(self, method: str, **overrides: Any) -> DDRankingConfig:
        """The preset of `method` (or of a preset name) with `overrides` (:func:`preset_for`)."""
        return preset_for(method, **overrides)

    def evaluate(self, images: torch.Tensor, labels: torch.Tensor, data: Any,
                 settings: DDRankingConfig | None = None, **run: Any) -> DDRankingReport:
        """:func:`~datadistill.evaluation.ddranking.score` (`run`: its ScoreOptions keywords)."""
        return score(images, labels, data, settings, **run)


# The registry: name -> protocol. A new protocol is one entry (a ClassicProtocol subclass
# runs through evaluate(); any object with the same interface is listed for runs and the CLI).
PROTOCOLS: dict[str, EvaluationProtocol] = {p.name: p for p in (
    ClassicProtocol(), ChallengeProtocol(), DDRankingProtocol())}
RUN_PROTOCOLS = tuple(PROTOCOLS)  # what a run's evaluation.protocols may name


def set_protocols() -> tuple[str, ...]:
    """The registered protocols that :func:`evaluate` runs on one set (classic, challenge)."""
    return tuple(n for n, p in PROTOCOLS.items() if isinstance(p, ClassicProtocol))


# ----------------------------------------------------------------------------- one set


def evaluate(images: torch.Tensor, labels: torch.Tensor | None, test: ImageSet,
             options: EvalOptions | None = None, **overrides: Any) -> EvalReport:
    """Train `num_runs` fresh networks on (images, labels) and test them on `test`.

    `options` is an :class:`EvalOptions`; its fields may also be given as keywords
    (``protocol``, ``model``, ``lr``, ``num_runs``, ``epochs``, ``batch_size``, ``seed``,
    ``device``, ``dsa_strategy``, ``progress``, ``model_kwargs``, ``ipc``, ``report``,
    ``period``, ``unofficial``, ``cache``, ``space``), which replace the object's.

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
    o = with_options(EvalOptions, options, overrides, "evaluate")
    protocol = PROTOCOLS.get(o.protocol)
    if not isinstance(protocol, ClassicProtocol):
        check_space(o.space, test)
        raise ConfigError(f"unknown protocol {o.protocol!r}; use one of {set_protocols()}")
    return protocol.run(images, labels, test, o)


def _challenge_labels(images: torch.Tensor, labels: torch.Tensor | None, test: ImageSet,
                      ipc: int | None, lr: float | None) -> torch.Tensor:
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


def _runs(x: torch.Tensor, y: torch.Tensor, test: ImageSet, run: RunOptions, o: EvalOptions,
          num_runs: int, fp: str | None) -> RunResults:
    """Last accuracies (report "last") or test curves of `num_runs` runs, with their seconds;
    runs already in ``o.cache`` under `fp` (finished by an earlier, interrupted call) are not
    trained again."""
    kw = dict(model=run.model, lr=run.lr, epochs=run.epochs, batch_size=run.batch_size,
              dsa=run.dsa, seed=run.seed, device=run.device, model_kwargs=run.model_kwargs,
              progress=run.progress)

    def one_run(r: Run) -> float | RunCurve:
        if o.report == "last":
            return train_and_test(x, y, test, run=r.index, **kw)
        curve = train_and_test_curve(x, y, test, period=o.period, run=r.index, **kw)
        log.info("%s %s run %d/%d: test accuracy %.4f (best %.4f)", o.protocol, run.model,
                 r.index + 1, num_runs, curve.last, curve.best)
        return curve

    shown = Show(run.progress, f"evaluate {run.model}", f"{o.protocol} {run.model}")
    return run_all(num_runs, one_run, seed=run.seed, show=shown,
                   done=Cached(o.cache, fp) if o.cache is not None and fp else None)


def _report(protocol: str, model: str, o: EvalOptions, values: list,
            settings: dict) -> EvalReport:
    """The report from the runs' values: accuracies (report "last") or test curves."""
    curves = [] if o.report == "last" else values
    accs = values if o.report == "last" else [c.last for c in curves]
    settings.update(_report_settings(o.report, o.period, curves))
    if o.report == "best_of_periodic":
        accs = [c.best for c in curves]
    return EvalReport.from_accuracies(protocol, model, accs, settings)


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


# ----------------------------------------------------------------------------- wrappers


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
