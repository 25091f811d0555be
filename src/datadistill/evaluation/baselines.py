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
from typing import Any

import torch

from datadistill.checks import check_ipc_fits, check_training
from datadistill.data import prepare, random_subset
from datadistill.errors import ConfigError
from datadistill.evaluation.protocols import (
    DEFAULT_LR,
    EvalReport,
    classic_settings,
    make_dsa,
    train_and_test,
)
from datadistill.runs import Cached, Run, Show, run_all
from datadistill.runtime.runlog import RunCache, fingerprint
from datadistill.training import derive_seeds

__all__ = ["baseline_full", "baseline_random", "random_subset"]

log = logging.getLogger(__name__)


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


def baseline_random(
    dataset_or_prepared: Any,
    ipc: int,
    *,
    model: str = "convnet",
    num_runs: int = 5,
    epochs: int = 1000,
    batch_size: int = 256,
    lr: float = DEFAULT_LR,
    seed: int = 0,
    device: str | torch.device = "cpu",
    dsa_strategy: str | None = None,
    progress: bool = False,
    model_kwargs: dict | None = None,
    root: Any = None,
    zca: bool = False,
    cache: RunCache | None = None,
) -> EvalReport:
    """Classic evaluation of a fresh random class-balanced subset per run (lr 0.01).

    With a :class:`~datadistill.runtime.runlog.RunCache`, finished runs are stored and not redone.

    Example:
        >>> baseline_random("mnist", ipc=1, epochs=300, num_runs=3)        # doctest: +SKIP
    """
    real = _real(dataset_or_prepared, root, zca)
    check_training(lr=lr, num_runs=num_runs, epochs=epochs, batch_size=batch_size)
    check_ipc_fits(ipc, real.train.labels, real.info.class_names)
    strategy = real.info.dsa_strategy if dsa_strategy is None else dsa_strategy
    dsa = make_dsa(strategy)
    test = real.test.to(device)

    def one_run(run: Run) -> float:
        gen = torch.Generator().manual_seed(_subset_seed(seed, run.index))
        images, labels = random_subset(real.train, ipc, gen)
        return train_and_test(images.to(device), labels.to(device), test, model=model, lr=lr,
                              epochs=epochs, batch_size=batch_size, dsa=dsa, seed=seed,
                              run=run.index, device=device, model_kwargs=model_kwargs,
                              progress=progress)

    fp = None if cache is None else fingerprint(real.train.images, real.train.labels, dict(
        ipc=ipc, model=model, lr=lr, epochs=epochs, batch_size=batch_size, seed=seed,
        device=str(device), dsa=strategy, model_kwargs=model_kwargs))
    accs = run_all(num_runs, one_run, seed=seed,
                   show=Show(progress, f"random subset {model}", f"random ipc {ipc}"),
                   done=None if cache is None else Cached(cache, fp)).values
    settings = _settings(
        real,
        model,
        lr,
        epochs,
        batch_size,
        strategy if dsa else None,
        num_runs,
        seed,
        model_kwargs,
        device,
    )
    settings["ipc"] = ipc
    return EvalReport.from_accuracies("random", model, accs, settings)


def baseline_full(
    dataset_or_prepared: Any,
    *,
    model: str = "convnet",
    epochs: int = 50,
    num_runs: int = 1,
    batch_size: int = 256,
    lr: float = DEFAULT_LR,
    dsa: bool = True,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
    model_kwargs: dict | None = None,
    root: Any = None,
    zca: bool = False,
) -> EvalReport:
    """Train on the whole training set with the classic hyperparameters.

    1000 full-data epochs are out of reach on a CPU, so `epochs` is a parameter (the loop
    still runs ``epochs + 1`` epochs with the decay after ``epochs // 2 + 1``); the report's
    settings record it.

    Example:
        >>> baseline_full("digits", epochs=20).mean                         # doctest: +SKIP
    """
    real = _real(dataset_or_prepared, root, zca)
    check_training(lr=lr, num_runs=num_runs, epochs=epochs, batch_size=batch_size)
    strategy = real.info.dsa_strategy if dsa else None
    aug = make_dsa(strategy)
    train_x, train_y = real.train.images.to(device), real.train.labels.to(device)  # moved once
    test = real.test.to(device)

    def one_run(run: Run) -> float:
        return train_and_test(train_x, train_y, test, model=model, lr=lr, epochs=epochs,
                              batch_size=batch_size, dsa=aug, seed=seed, run=run.index,
                              device=device, model_kwargs=model_kwargs, progress=progress)

    accs = run_all(num_runs, one_run, seed=seed,
                   show=Show(progress, f"full data {model}", "full data")).values
    settings = _settings(
        real, model, lr, epochs, batch_size, strategy, num_runs, seed, model_kwargs, device
    )
    settings["n_images"] = int(train_y.shape[0])
    return EvalReport.from_accuracies("full", model, accs, settings)


def _settings(real: Any, model: str, lr: float, epochs: int, batch_size: int,
              strategy: str | None, num_runs: int, seed: int, model_kwargs: dict | None,
              device: Any) -> dict:
    return {"model": model, **classic_settings(
        real.test, lr=lr, epochs=epochs, batch_size=batch_size, dsa_strategy=strategy,
        num_runs=num_runs, seed=seed, model_kwargs=model_kwargs, device=device)}
