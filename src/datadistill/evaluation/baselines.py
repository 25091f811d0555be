"""Reference points for a distilled set: a random real subset of the same size, and the full
training set, both trained with the classic protocol (see :mod:`datadistill.evaluation.protocols`).

DD-Ranking's IOR compares a distilled set against a random subset evaluated the same way;
its HLR compares against the full training set. Accuracies are fractions in [0, 1].

Example:
    >>> real = prepare("cifar10")                                          # doctest: +SKIP
    >>> baseline_random(real, ipc=10, epochs=1000).mean                     # doctest: +SKIP
    0.26
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from datadistill.checks import check_ipc_fits, check_training
from datadistill.data import prepare, random_subset
from datadistill.errors import ConfigError
from datadistill.evaluation.classic import (
    DEFAULT_LR,
    EvalReport,
    RunOptions,
    classic_settings,
    make_dsa,
    train_and_test,
    with_options,
)
from datadistill.runs import Cached, Run, Show, run_all
from datadistill.runtime.runlog import RunCache, fingerprint
from datadistill.training import derive_seeds

__all__ = ["BaselineOptions", "baseline_full", "baseline_random", "random_subset"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BaselineOptions:
    """How a baseline trains (the classic protocol's settings) and where its data comes from.

    :func:`baseline_full` defaults to 50 epochs and 1 run (:data:`FULL_DEFAULTS`)."""

    model: str = "convnet"
    num_runs: int = 5
    epochs: int = 1000
    batch_size: int = 256
    lr: float = DEFAULT_LR
    seed: int = 0
    device: str | torch.device = "cpu"
    dsa_strategy: str | None = None  # None: the dataset's; "none": off
    progress: bool = False
    model_kwargs: dict | None = None
    root: Any = None  # data root, when the dataset is given by name
    zca: bool = False  # ZCA-whiten, when the dataset is given by name
    cache: RunCache | None = None  # baseline_random: finished runs, stored as they end


FULL_DEFAULTS = {"epochs": 50, "num_runs": 1}


def _real(dataset_or_prepared: Any, root: Any, zca: bool) -> Any:
    """A prepared RealData (train, test, info, zca) from a name or an existing RealData."""
    if isinstance(dataset_or_prepared, str):
        return prepare(dataset_or_prepared, root, zca=zca)
    if not (hasattr(dataset_or_prepared, "train") and hasattr(dataset_or_prepared, "test")):
        raise ConfigError("pass a dataset name or the result of datadistill.data.prepare(...)")
    return dataset_or_prepared


def _subset_seed(seed: int, run: int) -> int:
    # Separate stream from the network seeds (which use SeedSequence([seed, run])).
    return derive_seeds(seed, run, 1, n=1)[0]


def _run_kwargs(o: BaselineOptions, dsa: Any) -> dict[str, Any]:
    """The keywords of one classic run (:func:`train_and_test`, the run index aside)."""
    return dict(model=o.model, lr=o.lr, epochs=o.epochs, batch_size=o.batch_size, dsa=dsa,
                seed=o.seed, device=o.device, model_kwargs=o.model_kwargs, progress=o.progress)


def baseline_random(dataset_or_prepared: Any, ipc: int, options: BaselineOptions | None = None,
                    **overrides: Any) -> EvalReport:
    """Classic evaluation of a fresh random class-balanced subset per run (lr 0.01).

    `options` is a :class:`BaselineOptions`; its fields may also be given as keywords. With a
    :class:`~datadistill.runtime.runlog.RunCache`, finished runs are stored and not redone.

    Example:
        >>> baseline_random("mnist", ipc=1, epochs=300, num_runs=3)        # doctest: +SKIP
    """
    o = with_options(BaselineOptions, options, overrides, "baseline_random")
    real = _real(dataset_or_prepared, o.root, o.zca)
    check_training(lr=o.lr, num_runs=o.num_runs, epochs=o.epochs, batch_size=o.batch_size)
    check_ipc_fits(ipc, real.train.labels, real.info.class_names)
    strategy = real.info.dsa_strategy if o.dsa_strategy is None else o.dsa_strategy
    dsa = make_dsa(strategy)
    test = real.test.to(o.device)
    kw = _run_kwargs(o, dsa)

    def one_run(run: Run) -> float:
        gen = torch.Generator().manual_seed(_subset_seed(o.seed, run.index))
        images, labels = random_subset(real.train, ipc, gen)
        return train_and_test(images.to(o.device), labels.to(o.device), test, run=run.index,
                              **kw)

    fp = None if o.cache is None else fingerprint(real.train.images, real.train.labels, dict(
        ipc=ipc, model=o.model, lr=o.lr, epochs=o.epochs, batch_size=o.batch_size,
        seed=o.seed, device=str(o.device), dsa=strategy, model_kwargs=o.model_kwargs))
    accs = run_all(o.num_runs, one_run, seed=o.seed,
                   show=Show(o.progress, f"random subset {o.model}", f"random ipc {ipc}"),
                   done=None if o.cache is None else Cached(o.cache, fp)).values
    settings = _settings(real, o, strategy if dsa else None)
    settings["ipc"] = ipc
    return EvalReport.from_accuracies("random", o.model, accs, settings)


def baseline_full(dataset_or_prepared: Any, options: BaselineOptions | None = None, *,
                  dsa: bool = True, **overrides: Any) -> EvalReport:
    """Train on the whole training set with the classic hyperparameters.

    `options` is a :class:`BaselineOptions` (default: 50 epochs, 1 run); its fields may also
    be given as keywords. `dsa` False trains without augmentation. 1000 full-data epochs are
    out of reach on a CPU, so `epochs` is a parameter (the loop still runs ``epochs + 1``
    epochs with the decay after ``epochs // 2 + 1``); the report's settings record it.

    Example:
        >>> baseline_full("digits", epochs=20).mean                         # doctest: +SKIP
    """
    o = with_options(BaselineOptions, options or BaselineOptions(**FULL_DEFAULTS), overrides,
                     "baseline_full")
    if o.cache is not None:
        raise ConfigError("baseline_full keeps no run cache; pass cache only to baseline_random")
    real = _real(dataset_or_prepared, o.root, o.zca)
    check_training(lr=o.lr, num_runs=o.num_runs, epochs=o.epochs, batch_size=o.batch_size)
    given = real.info.dsa_strategy if o.dsa_strategy is None else o.dsa_strategy
    strategy = given if dsa else None
    kw = _run_kwargs(o, make_dsa(strategy))
    train_x, train_y = real.train.images.to(o.device), real.train.labels.to(o.device)  # once
    test = real.test.to(o.device)

    def one_run(run: Run) -> float:
        return train_and_test(train_x, train_y, test, run=run.index, **kw)

    accs = run_all(o.num_runs, one_run, seed=o.seed,
                   show=Show(o.progress, f"full data {o.model}", "full data")).values
    settings = _settings(real, o, strategy)
    settings["n_images"] = int(train_y.shape[0])
    return EvalReport.from_accuracies("full", o.model, accs, settings)


def _settings(real: Any, o: BaselineOptions, strategy: str | None) -> dict:
    run = RunOptions(model=o.model, lr=o.lr, epochs=o.epochs, batch_size=o.batch_size,
                     seed=o.seed, device=o.device, model_kwargs=o.model_kwargs)
    return {"model": o.model, **classic_settings(real.test, run, num_runs=o.num_runs,
                                                 dsa_strategy=strategy)}
