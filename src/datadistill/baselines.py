"""Reference points for a distilled set: a random real subset of the same size, and the full
training set, both trained with the classic protocol (see :mod:`datadistill.evaluate`).

DD-Ranking's IOR compares a distilled set against a random subset evaluated the same way;
its HLR compares against the full training set. Accuracies are fractions in [0, 1].

Example:
    >>> real = prepare("cifar10")                                          # doctest: +SKIP
    >>> baseline_random(real, ipc=10, epochs=1000).mean                     # doctest: +SKIP
    0.26
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch

from datadistill.checks import check_ipc_fits, check_training
from datadistill.data import ImageSet, prepare
from datadistill.errors import ConfigError
from datadistill.evaluate import DEFAULT_LR, EvalReport, make_dsa, train_and_test
from datadistill.progress import progress_bar
from datadistill.runlog import RunCache, fingerprint

log = logging.getLogger(__name__)


def random_subset(
    train: ImageSet, ipc: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """`ipc` random images of every class, class-major: images (K*ipc, C, H, W), labels
    (K*ipc,) = [0]*ipc + [1]*ipc + ...

    Example:
        >>> x, y = random_subset(real.train, 10, torch.Generator().manual_seed(0))  # doctest: +SKIP
    """
    if ipc < 1:
        raise ConfigError(f"ipc must be >= 1, got {ipc}")
    labels = train.labels.cpu()
    picks = []
    for c in range(train.info.num_classes):
        idx = torch.nonzero(labels == c).flatten()  # (n_c,) indices of class c
        if idx.numel() < ipc:
            name = train.info.class_names[c]
            raise ConfigError(
                f"class {c} ({name!r}) has only {idx.numel()} training images, "
                f"fewer than ipc={ipc}; lower ipc"
            )
        # Permutation drawn on CPU so the subset does not depend on where the data lives.
        picks.append(idx[torch.randperm(idx.numel(), generator=generator)[:ipc]])
    order = torch.cat(picks).to(train.images.device)
    return train.images[order].clone(), train.labels[order].clone()


def _real(dataset_or_prepared: Any, root: Any, zca: bool) -> Any:
    """A prepared RealData (train, test, info, zca) from a name or an existing RealData."""
    if isinstance(dataset_or_prepared, str):
        return prepare(dataset_or_prepared, root, zca=zca)
    if not (hasattr(dataset_or_prepared, "train") and hasattr(dataset_or_prepared, "test")):
        raise ConfigError("pass a dataset name or the result of datadistill.data.prepare(...)")
    return dataset_or_prepared


def _subset_seed(seed: int, run: int) -> int:
    # Separate stream from the network seeds (which use SeedSequence([seed, run])).
    return int(np.random.SeedSequence([seed, run, 1]).generate_state(1)[0])


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

    With a :class:`~datadistill.runlog.RunCache`, finished runs are stored and not redone.

    Example:
        >>> baseline_random("mnist", ipc=1, epochs=300, num_runs=3)        # doctest: +SKIP
    """
    real = _real(dataset_or_prepared, root, zca)
    check_training(lr=lr, num_runs=num_runs, epochs=epochs, batch_size=batch_size)
    check_ipc_fits(ipc, real.train.labels, real.info.class_names)
    strategy = real.info.dsa_strategy if dsa_strategy is None else dsa_strategy
    dsa = make_dsa(strategy)
    test = real.test.to(device)
    accs = []
    fp = None if cache is None else fingerprint(real.train.images, real.train.labels, dict(
        ipc=ipc, model=model, lr=lr, epochs=epochs, batch_size=batch_size, seed=seed,
        device=str(device), dsa=strategy, model_kwargs=model_kwargs))
    for run in progress_bar(range(num_runs), enabled=progress, desc=f"random subset {model}",
                            leave=False, stage=True):
        done = cache.get(fp, run) if cache else None
        if done is not None:  # finished by an earlier, interrupted call
            accs.append(done[0])
            continue
        gen = torch.Generator().manual_seed(_subset_seed(seed, run))
        images, labels = random_subset(real.train, ipc, gen)
        start = time.perf_counter()
        acc = train_and_test(
            images.to(device),
            labels.to(device),
            test,
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
        log.info("random ipc %d run %d/%d: test accuracy %.4f", ipc, run + 1, num_runs, acc)
        accs.append(acc)
        if cache:
            cache.put(fp, run, acc, round(time.perf_counter() - start, 3))
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
    accs = []
    for run in progress_bar(range(num_runs), enabled=progress, desc=f"full data {model}",
                            leave=False, stage=True):
        acc = train_and_test(
            train_x,
            train_y,
            test,
            model=model,
            lr=lr,
            epochs=epochs,
            batch_size=batch_size,
            dsa=aug,
            seed=seed,
            run=run,
            device=device,
            model_kwargs=model_kwargs,
            progress=progress,
        )
        log.info("full data run %d/%d: test accuracy %.4f", run + 1, num_runs, acc)
        accs.append(acc)
    settings = _settings(
        real, model, lr, epochs, batch_size, strategy, num_runs, seed, model_kwargs, device
    )
    settings["n_images"] = int(train_y.shape[0])
    return EvalReport.from_accuracies("full", model, accs, settings)


def _settings(
    real: Any,
    model: str,
    lr: float,
    epochs: int,
    batch_size: int,
    strategy: str | None,
    num_runs: int,
    seed: int,
    model_kwargs: dict | None,
    device: Any,
) -> dict:
    return {
        "dataset": real.info.name,
        "space": real.test.space,
        "model": model,
        "lr": lr,
        "epochs": epochs,
        "epochs_run": epochs + 1,
        "lr_decay_after_epoch": epochs // 2 + 1,
        "batch_size": batch_size,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "dsa_strategy": strategy,
        "num_runs": num_runs,
        "seed": seed,
        "model_kwargs": dict(model_kwargs or {}),
        "device": str(device),
    }
