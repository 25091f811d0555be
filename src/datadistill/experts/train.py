"""Expert trajectories: networks trained on the real data, every epoch's parameters kept.

MTT (Cazenavette et al., CVPR 2022, Sec. 3.1; official ``buffer.py``): K = 100 ConvNets from
random inits, each trained 50 epochs with plain SGD (lr 0.01, no momentum, no weight decay,
constant lr), batch 256, DSA on every real batch, CE loss; the parameters are recorded at
init (epoch 0) and after every epoch, and the test accuracy is logged per epoch.

Reproducibility: expert i draws its init and its data order/DSA from seeds derived from
(seed, i) only, so experts are independent of each other and of the global RNG, and a run
resumed after an interruption writes the same bytes as an uninterrupted one.

Several processes (``torchrun``): the missing experts are dealt out by
:func:`datadistill.runs.run_all` (an expert whose file is there is finished:
:class:`~datadistill.runs.OnDisk`), in rounds of K (rank r trains missing experts r, r+K, ...),
and each rank writes its own expert files, atomically (distinct files, temporary name +
rename), while rank 0 alone writes ``meta.json`` and holds the folder lock. Since an expert
depends on its index only, the store equals a single-process store bitwise (CPU), and a store
started with K processes resumes with any other K.

Strategy slots for the presets: ``optimizer="gsam"`` (FTD's flat experts, with
``gsam_rho``/``gsam_alpha``) and the ``epoch_subset`` hook of :func:`train_experts` (PAD's
per-epoch curriculum: which real samples epoch e sees).

Example:
    >>> data = prepare("digits")                                             # doctest: +SKIP
    >>> cfg = ExpertConfig(dataset="digits", num_experts=2, epochs=3)        # doctest: +SKIP
    >>> store = train_experts(cfg, data, "runs/digits/experts")              # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from datadistill import __version__, distributed
from datadistill.config import RunContext, check_saved_config
from datadistill.data import check_prepared
from datadistill.data.augment import DSA
from datadistill.errors import CompatibilityError, ConfigError
from datadistill.experts.gsam import GSAM
from datadistill.experts.store import (
    DTYPES,
    FORMAT_VERSION,
    META_FILE,
    ExpertStore,
    expert_path,
    save_expert,
    write_meta,
)
from datadistill.models.functional import flatten_params, param_spec
from datadistill.runs import OnDisk, Run, Show, pending, run_all
from datadistill.runtime.lock import lock_folder_if
from datadistill.training import (
    EpochEnd,
    FitHooks,
    FitOptions,
    build_model,
    fit,
    images_only,
    run_seeds,
    test_accuracy,
)

logger = logging.getLogger(__name__)

OPTIMIZERS = ("sgd", "gsam")
EpochSubset = Callable[[int], torch.Tensor]  # 0-based epoch -> int64 indices into data.train


@dataclass
class ExpertSection:
    """The ``experts:`` section of a pipeline config: how the trajectories are trained
    (defaults: MTT's official ``buffer.py``)."""

    num_experts: int = 100  # trajectories to train (MTT: 100)
    epochs: int = 50  # epochs per expert; distillation needs >= max_start_epoch - 1 + expert_epochs
    lr: float = 0.01  # constant SGD learning rate (MTT `lr_teacher` of buffer.py)
    momentum: float = 0.0  # MTT: 0 ("much easier for the synthetic data to imitate")
    weight_decay: float = 0.0  # MTT: 0
    batch_size: int = 256  # real images per SGD step (MTT `batch_train`)
    optimizer: str = "sgd"  # "sgd" (MTT) | "gsam" (FTD's flat experts, wrapping the SGD)
    gsam_rho: float = 0.01  # GSAM perturbation radius (FTD: 0.01); only for optimizer=gsam
    gsam_alpha: float = 0.3  # GSAM surrogate-gap weight (FTD Table 7: 0.3 or 1); gsam only
    dsa: bool = True  # DSA on every real batch (MTT: on)
    dsa_strategy: str | None = None  # None: the dataset's default strategy
    test_samples: int | None = None  # per-epoch accuracy on this many test images (None: all)
    dtype: str = "float32"  # storage dtype of the parameters: float32 | float16 (half the disk)

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"experts.optimizer must be one of {OPTIMIZERS}, got "
                              f"{self.optimizer!r}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"experts.dtype must be one of {tuple(DTYPES)}, got {self.dtype!r}")
        if self.test_samples is not None and self.test_samples < 1:
            raise ConfigError(f"experts.test_samples must be >= 1 or null, got "
                              f"{self.test_samples}")
        for name in ("num_experts", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"experts.{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"experts.lr must be > 0, got {self.lr} (MTT: 0.01)")


@dataclass
class ExpertConfig(ExpertSection, RunContext):
    """How the expert trajectories are trained: the run context (data, model, seed, device;
    expert i uses seeds derived from (seed, i), and ``train_experts``' device argument
    overrides ``device``) and the ``experts`` section (:class:`ExpertSection`)."""


# Keys that may change between runs writing the same store (the rest must match).
_FREE_KEYS = ("num_experts", "device", "data_root")


# Expert i's (init seed, data-order/DSA seed): the run driver's derivation from (seed, i).
expert_seeds = run_seeds


def store_meta(cfg: ExpertConfig, info, model: nn.Module, dsa_strategy: str | None) -> dict:
    """The self-describing meta.json of a store trained with ``cfg``."""

    spec = param_spec(model)
    return {
        "format_version": FORMAT_VERSION, "kind": "expert_store",
        "dataset": info.name, "model": cfg.model, "model_kwargs": dict(cfg.model_kwargs),
        "param_names": list(spec.names), "param_shapes": [list(s) for s in spec.shapes],
        "num_params": spec.numel, "optimizer": cfg.optimizer, "lr": cfg.lr,
        "momentum": cfg.momentum, "weight_decay": cfg.weight_decay, "epochs": cfg.epochs,
        "batch_size": cfg.batch_size, "seed": cfg.seed, "zca": cfg.zca,
        "dsa_strategy": dsa_strategy, "num_classes": info.num_classes,
        "channels": info.channels, "image_size": list(info.image_size), "dtype": cfg.dtype,
        "num_experts": cfg.num_experts, "config": dataclasses.asdict(cfg),
        "produced_by": f"datadistill {__version__} train_experts",
    }


def _check_resume(directory: Path, meta: dict) -> None:
    """A store may only be continued with the config that started it."""
    if not (directory / META_FILE).is_file():
        return
    old = ExpertStore(directory).meta.get("config")
    new = meta["config"]
    if old is None:
        raise CompatibilityError(f"{directory} holds experts not made by train_experts "
                                 "(imported?); train into another directory.")
    check_saved_config(old, new, directory, what="expert config", free=tuple(_FREE_KEYS),
                       fix="use a new out_dir or the original settings.")


def _made_by(directory: Path, training: bool) -> dict:
    """``{"world_size": K}`` of the last call that trained experts into the store (kept when
    this call only reuses a finished store)."""
    if training or not (directory / META_FILE).is_file():
        return distributed.metadata()
    old = ExpertStore(directory).meta
    return {"world_size": old["world_size"]} if "world_size" in old else {}


def _check_data(cfg: ExpertConfig, data) -> None:
    check_prepared(data, cfg.dataset, cfg.zca, "experts", cfg.train_per_class)


def train_experts(cfg: ExpertConfig, data, out_dir: str | Path, *, device: str | None = None,
                  progress: bool = True,
                  epoch_subset: EpochSubset | None = None) -> ExpertStore:
    """Train ``cfg.num_experts`` experts into ``out_dir``, skipping those already written.

    Args:
        cfg: the expert recipe.
        data: :class:`datadistill.data.RealData` in the space given by ``cfg.zca``.
        out_dir: the store directory (created); an existing store is resumed.
        device: training device (default ``cfg.device``); snapshots are stored on the CPU.
        progress: show a progress bar.
        epoch_subset: optional hook ``epoch -> indices`` of the training samples used in that
            epoch (PAD's curriculum); None = the whole training set every epoch.

    Returns:
        The :class:`ExpertStore` of ``out_dir``.
    """

    _check_data(cfg, data)
    device = device or cfg.device
    directory = Path(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    strategy = (cfg.dsa_strategy or data.info.dsa_strategy) if cfg.dsa else None
    meta = store_meta(cfg, data.info, build_model(cfg, data.info), strategy)
    _check_resume(directory, meta)
    dsa = DSA(strategy) if strategy else None
    written = OnDisk(lambda i: expert_path(directory, i).is_file())  # a finished expert
    todo = pending(cfg.num_experts, written)  # as rank 0 sees it before anyone writes

    def one_expert(run: Run) -> None:  # each rank writes its own experts' files
        params, acc = train_one_expert(cfg, data, run.index, dsa=dsa, device=device,
                                       epoch_subset=epoch_subset, progress=progress)
        save_expert(directory, run.index, params, acc, cfg.dtype)
        logger.info("expert %d: final test accuracy %.4f", run.index, float(acc[-1]))

    if len(todo) < cfg.num_experts:
        logger.info("expert store %s: %d of %d experts present, resuming at expert %d",
                    directory, cfg.num_experts - len(todo), cfg.num_experts,
                    todo[0] if todo else cfg.num_experts)
    with lock_folder_if(bool(todo), directory):  # a finished store is shared without a lock
        if distributed.is_main():
            write_meta(directory, {**meta, **_made_by(directory, bool(todo))})
        distributed.barrier()  # rank 0 holds the lock (and cleared old .tmp files) first
        # The missing experts in rounds of K processes (rank r: the round's r-th); run_all
        # returns once every rank's experts are on disk.
        run_all(cfg.num_experts, one_expert, seed=cfg.seed, show=Show(progress, "experts"),
                done=written)
    return ExpertStore(directory)


def train_one_expert(cfg: ExpertConfig, data, index: int, *, dsa=None, device: str = "cpu",
                     epoch_subset: EpochSubset | None = None,
                     progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Params (E+1, P) and test accuracy (E+1,) of expert ``index`` (epoch 0 = init)."""

    init_seed, data_seed = expert_seeds(cfg.seed, index)
    net = build_model(cfg, data.info, init_seed)
    x_test, y_test = monitor_split(data.test, cfg.test_samples)
    snapshots = [flatten_params(net).cpu()]  # (P,) per epoch
    accs = [test_accuracy(net, x_test, y_test, device=device)]

    def record(end: EpochEnd) -> None:
        snapshots.append(flatten_params(net).cpu())
        accs.append(test_accuracy(net, x_test, y_test, device=device))

    fit(net, data.train.images, data.train.labels, expert_optimizer(cfg, net),
        FitOptions(epochs=cfg.epochs, batch_size=cfg.batch_size, device=device,
                   progress=progress, desc=f"expert {index}"),
        FitHooks(augment=None if dsa is None else images_only(dsa), after_epoch=record,
                 epoch_pool=epoch_subset),
        generator=torch.Generator().manual_seed(data_seed))  # data order and DSA draws
    return torch.stack(snapshots), torch.tensor(accs, dtype=torch.float32)


def monitor_split(test, samples: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The test images and labels an expert's per-epoch accuracy is measured on.

    None: the whole split (MTT). Otherwise a fixed seeded random subset of ``samples`` images,
    the same for every expert and epoch (cheaper monitoring; parameters are unaffected).
    """
    if samples is None or samples >= len(test):
        return test.images, test.labels
    keep = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[:samples]
    keep = keep.to(test.labels.device)
    return test.images[keep], test.labels[keep]


def expert_optimizer(cfg: ExpertConfig, net: nn.Module) -> torch.optim.Optimizer:
    """SGD (MTT), or GSAM around the same SGD (FTD); both step through ``step(closure)``."""
    sgd = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay)
    if cfg.optimizer != "gsam":
        return sgd

    return GSAM(net.parameters(), sgd, rho=cfg.gsam_rho, alpha=cfg.gsam_alpha, adaptive=True,
                model=net)
