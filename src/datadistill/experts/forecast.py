"""Before experts train: the store's size on disk and the time per epoch, from a timed batch.

At ImageNet-1K scale an expert store is tens of GB and an epoch takes hours, so both are
predicted before the first expert starts, and a disk that cannot hold the store refuses the
run then, not after days of training:

    store   = experts x (epochs + 1) x P x s   (+ the per-epoch accuracies)
              s = 4 bytes (experts.dtype=float32) or 2 (float16)
    epoch   = ceil(N_train / batch) x t_batch + ceil(N_monitor / 512) x t_test

``t_batch`` is one real training step (the expert's model, optimiser and DSA, on a batch read
from the training split as training reads it), timed after one untimed warm-up step;
``t_test`` one forward of 512 monitoring images. Under torchrun the missing experts are shared
out, so the wall time divides by the number of processes (at most the number of experts).

Example:
    >>> f = forecast_store(ecfg, data, "runs/in1k/experts", device="cpu")  # doctest: +SKIP
    >>> print("\\n".join(f.lines()))                                        # doctest: +SKIP
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from datadistill.data.augment import DSA
from datadistill.errors import ConfigError
from datadistill.experts.store import DTYPES, expert_path
from datadistill.experts.train import expert_optimizer, monitor_split
from datadistill.models.functional import param_spec
from datadistill.training import build_model, train_step

TEST_BATCH = 512  # test_accuracy's batch


@dataclass(frozen=True)
class StoreForecast:
    """Predicted size and time of an expert store (see the module docstring)."""

    experts: int  # experts still to train
    epochs: int
    num_params: int  # P
    dtype: str
    free_bytes: int  # free space where the store is written
    batch_seconds: float  # one training step of `batch_size` images
    batches_per_epoch: int
    test_seconds: float  # one forward of TEST_BATCH monitoring images
    test_batches: int
    processes: int = 1

    @property
    def expert_bytes(self) -> int:
        """One expert file: (epochs + 1) x P parameters and as many float32 accuracies."""
        return (self.epochs + 1) * (self.num_params * DTYPES[self.dtype].itemsize + 4)

    @property
    def store_bytes(self) -> int:
        return self.experts * self.expert_bytes

    @property
    def epoch_seconds(self) -> float:
        return self.batches_per_epoch * self.batch_seconds + self.test_batches * self.test_seconds

    @property
    def wall_seconds(self) -> float:
        """All missing experts, shared out over the processes."""
        rounds = -(-self.experts // max(1, min(self.processes, self.experts or 1)))
        return rounds * self.epochs * self.epoch_seconds

    def lines(self) -> list[str]:
        """What the CLI prints before training."""
        return [
            f"expert store: {self.experts} experts x {self.epochs + 1} snapshots x "
            f"{self.num_params:,} parameters ({self.dtype}) = {self.store_bytes / 1e9:.2f} GB "
            f"to write; {self.free_bytes / 1e9:.2f} GB free",
            f"time: one batch {self.batch_seconds:.3f} s x {self.batches_per_epoch} batches + "
            f"monitoring {self.test_batches} x {self.test_seconds:.3f} s = about "
            f"{_hours(self.epoch_seconds)} per epoch, {_hours(self.wall_seconds)} for the store "
            f"on {self.processes} process(es) (a timed batch on this device, not a measurement "
            "of the run)",
        ]


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 600 else f"{seconds:.1f} s"


def _timed(step, repeats: int = 1) -> float:
    step()  # warm-up: allocations, kernel selection
    t0 = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - t0) / repeats


def time_batches(ecfg, data, device: str) -> tuple[float, float]:
    """Seconds of one training step (batch ``ecfg.batch_size``) and of one monitoring forward
    (TEST_BATCH images), on ``device``, with the expert's model, optimiser and DSA."""

    net = build_model(ecfg, data.info, 0).to(device)
    opt = expert_optimizer(ecfg, net)
    strategy = (ecfg.dsa_strategy or data.info.dsa_strategy) if ecfg.dsa else None
    dsa = DSA(strategy) if strategy else None
    gen = torch.Generator().manual_seed(0)
    n = len(data.train)

    def train() -> None:
        idx = torch.randperm(n, generator=gen)[:ecfg.batch_size].sort().values
        x = data.train.images[idx].to(device)  # read as fit reads it
        y = data.train.labels[idx.to(data.train.labels.device)].to(device)
        if dsa is not None:
            x = dsa(x, generator=gen)
        train_step(net, opt, torch.nn.functional.cross_entropy, x, y)

    x_test, _ = monitor_split(data.test, ecfg.test_samples)

    @torch.no_grad()
    def test() -> None:
        net.eval()
        net(x_test[torch.arange(min(TEST_BATCH, len(x_test)))].to(device))
        net.train()

    return _timed(train), _timed(test)


def forecast_store(ecfg, data, out_dir: str | Path, *, device: str = "cpu",
                   processes: int = 1) -> StoreForecast:
    """Predict the missing experts' disk bytes and time (see the module docstring)."""

    out = Path(out_dir)
    missing = sum(not expert_path(out, i).is_file() for i in range(ecfg.num_experts))
    probe = out if out.is_dir() else next(p for p in out.parents if p.is_dir())
    batch_s, test_s = time_batches(ecfg, data, device) if missing else (0.0, 0.0)
    monitored = len(monitor_split(data.test, ecfg.test_samples)[1])
    return StoreForecast(
        experts=missing, epochs=ecfg.epochs,
        num_params=param_spec(build_model(ecfg, data.info, 0)).numel, dtype=ecfg.dtype,
        free_bytes=shutil.disk_usage(probe).free, batch_seconds=batch_s,
        batches_per_epoch=-(-len(data.train) // ecfg.batch_size), test_seconds=test_s,
        test_batches=-(-monitored // TEST_BATCH), processes=processes)


def check_disk(forecast: StoreForecast, out_dir: str | Path) -> None:
    """ConfigError when the missing experts do not fit the free disk (before training)."""
    if forecast.store_bytes <= forecast.free_bytes:
        return
    half = "" if forecast.dtype == "float16" else " experts.dtype=float16 (half the bytes),"
    raise ConfigError(
        f"the expert store needs {forecast.store_bytes / 1e9:.2f} GB more in {out_dir} but only "
        f"{forecast.free_bytes / 1e9:.2f} GB is free; free space, write it elsewhere (--out),"
        f"{half} or train fewer experts (experts.num_experts)")
