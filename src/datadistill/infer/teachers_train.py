"""INFER's teachers: train them on the full training set and keep them in a store.

INFER (Zhang et al., ICLR 2025) uses M pretrained teachers twice: each one optimises its own
compensators (Sec. 3.2), and their mean logits label every instance (Sec. 3.3). The README
points to DWA's ``squeeze_cifar100.py`` for training them: SGD lr 0.1, momentum 0.9, weight
decay 5e-4, cosine annealing over 200 epochs (stepped per epoch), batch 128, RandomCrop(pad 4)
+ horizontal flip; the last checkpoint is kept.

Store layout, one folder per architecture::

    <teacher_dir>/<arch>/model.pt        state_dict, read with weights_only=True
    <teacher_dir>/<arch>/meta.json       arch, dataset, classes, recipe, test accuracy
    <teacher_dir>/<arch>/checkpoint.pt   only while training: resumes an interrupted teacher

``meta.json`` is written last, so a folder with one holds a finished teacher, and
:func:`train_teachers` skips it on a re-run.

Example:
    >>> store = train_teachers(cfg, "runs/cifar100_teachers", progress=True)  # doctest: +SKIP
    >>> teachers = [store.load(a, "cuda") for a in store.archs()]              # doctest: +SKIP
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from datadistill import __version__, distributed
from datadistill.config import check_saved_config
from datadistill.data import DatasetInfo, ImageSet, RealData, prepare, renormalize
from datadistill.errors import ArtifactError, CompatibilityError, ConfigError
from datadistill.infer.config import InferConfig, TeacherConfig
from datadistill.infer.transforms import black_level, crop_flip, pixels_at, uses_flip
from datadistill.io import load_tensors, read_json, save_tensors, write_json
from datadistill.models.teachers import create_teacher
from datadistill.runs import OnDisk, Run, run_all
from datadistill.runtime.lock import locks_output
from datadistill.training import (
    EpochEnd,
    FitHooks,
    FitOptions,
    cosine_schedule,
    fit,
    seeded,
    test_accuracy,
)

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MODEL_FILE = "model.pt"
META_FILE = "meta.json"
CHECKPOINT_FILE = "checkpoint.pt"


def teacher_recipe(arch: str, info: DatasetInfo, cfg: TeacherConfig, flip: bool) -> dict:
    """Everything that determines a trained teacher; a resumed or reused teacher must match."""
    return {
        "arch": arch,
        "width_mult": cfg.width_mult,
        "dataset": info.name,
        "num_classes": info.num_classes,
        "in_channels": info.channels,
        "image_size": list(info.image_size),
        "epochs": cfg.epochs,
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "momentum": cfg.momentum,
        "weight_decay": cfg.weight_decay,
        "crop_padding": pixels_at(info.image_size, cfg.crop_padding),
        "flip": flip,
        "seed": cfg.seed,
    }


@dataclass(frozen=True)
class TeacherCheckpoint:
    """Where :func:`train_teacher` saves its per-epoch checkpoint (a store keeps it at
    ``<teacher_dir>/<arch>/checkpoint.pt``), and the recipe a checkpoint found there must
    have been made with (None: not checked)."""

    path: Path
    recipe: dict | None = None


def train_teacher(
    net: nn.Module,
    train: ImageSet,
    *,
    cfg: TeacherConfig,
    flip: bool,
    seed: int,
    device: str | torch.device = "cpu",
    checkpoint: TeacherCheckpoint | None = None,
    progress: bool = False,
) -> nn.Module:
    """Train ``net`` in place on ``train`` (normalised) with the teacher recipe of ``cfg``.

    With ``checkpoint``, the model, optimiser, scheduler and data-order generator are saved
    after every epoch and an existing checkpoint is resumed (its recipe must equal
    ``checkpoint.recipe``), so an interrupted run continues where it stopped. The progress
    line names the checkpoint's folder (the architecture, in a store).

    Example:
        >>> train_teacher(net, real.train, cfg=TeacherConfig(epochs=2), flip=True,
        ...               seed=0)                                          # doctest: +SKIP
    """
    net.to(device)
    opt = torch.optim.SGD(
        net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    schedule, sched = cosine_schedule(opt, cfg.epochs)
    gen = torch.Generator().manual_seed(seed)
    start = _resume(Path(checkpoint.path), net, opt, sched, gen, checkpoint.recipe) \
        if checkpoint else 0
    desc = f"teacher {Path(checkpoint.path).parent.name}" if checkpoint else "teacher"
    fill = black_level(train.info.mean, train.info.std)
    padding = pixels_at(train.info.image_size, cfg.crop_padding)

    def augment(xb: torch.Tensor, yb: torch.Tensor, g: torch.Generator | None):
        return crop_flip(xb, padding, fill, flip, g), yb  # (B, C, H, W), (B,)

    def after_epoch(end: EpochEnd) -> None:
        log.debug("teacher epoch %d/%d: train loss %.4f", end.epoch + 1, cfg.epochs,
                  end.mean_loss)
        if checkpoint:
            state = {"model": net.state_dict(), "optimizer": opt.state_dict(),
                     "scheduler": sched.state_dict(), "generator": gen.get_state(),
                     "epoch": end.epoch + 1, "recipe": checkpoint.recipe or {}}
            save_tensors(state, checkpoint.path)

    x, y = train.images.to(device), train.labels.to(device)  # moved once
    fit(net, x, y, opt,
        FitOptions(epochs=cfg.epochs, batch_size=cfg.batch_size, device=device, drop_single=True,
                   start_epoch=start, progress=progress, desc=desc, stage=True),
        FitHooks(augment=augment, schedule=schedule, after_epoch=after_epoch), generator=gen)
    return net.eval()


def _resume(
    path: Path,
    net: nn.Module,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    gen: torch.Generator,
    recipe: dict | None,
) -> int:
    """Load a per-epoch checkpoint if there is one; return the epoch to start from."""
    if not path.is_file():
        return 0
    state = load_tensors(path)
    if recipe is not None:
        check_saved_config(state.get("recipe") or {}, recipe, path, what="teacher recipe",
                           fix="delete it to retrain from scratch, or restore the settings it "
                           "was made with")
    net.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    gen.set_state(state["generator"])
    log.info("resuming %s at epoch %d", path.parent.name, int(state["epoch"]))
    return int(state["epoch"])


class TeacherStore:
    """A folder of trained teachers, one subfolder per architecture.

    Example:
        >>> store = TeacherStore("runs/cifar100_teachers")                   # doctest: +SKIP
        >>> store.check_compatible(real.info); net = store.load("resnet18_cifar")  # doctest: +SKIP
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def archs(self) -> list[str]:
        """Names of the finished teachers in the store (sorted)."""
        if not self.directory.is_dir():
            return []
        return sorted(p.parent.name for p in self.directory.glob(f"*/{META_FILE}"))

    def has(self, arch: str) -> bool:
        return (self.directory / arch / META_FILE).is_file()

    def meta(self, arch: str) -> dict:
        if not self.has(arch):
            raise ArtifactError(
                f"no finished teacher '{arch}' in {self.directory} (found: {self.archs()}); "
                "train it with `datadistill teachers` or point teacher_dir at the right store"
            )
        meta = read_json(self.directory / arch / META_FILE)
        if meta.get("format_version") != FORMAT_VERSION:
            raise ArtifactError(
                f"{self.directory / arch} has teacher format {meta.get('format_version')}, "
                f"this version reads {FORMAT_VERSION}; retrain the teacher"
            )
        return meta

    def save(self, net: nn.Module, meta: dict) -> None:
        """Write ``model.pt`` then ``meta.json`` (the completion marker); drop the checkpoint."""
        folder = self.directory / meta["arch"]
        state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
        save_tensors(state, folder / MODEL_FILE)
        write_json(
            {"format_version": FORMAT_VERSION, "kind": "infer_teacher", **meta}, folder / META_FILE
        )
        (folder / CHECKPOINT_FILE).unlink(missing_ok=True)

    def load(self, arch: str, device: str | torch.device = "cpu") -> nn.Module:
        """The teacher in eval mode with frozen parameters, on ``device``."""
        meta = self.meta(arch)
        net = create_teacher(
            arch,
            meta["in_channels"],
            meta["num_classes"],
            tuple(meta["image_size"]),
            width_mult=meta["width_mult"],
        )
        net.load_state_dict(load_tensors(self.directory / arch / MODEL_FILE))
        return net.requires_grad_(False).eval().to(device)

    def check_compatible(self, info: DatasetInfo, archs: list[str] | None = None) -> None:
        """Raise CompatibilityError unless every teacher was trained on ``info``'s dataset,
        classes (same order) and normalisation."""
        for arch in archs if archs is not None else self.archs():
            meta = self.meta(arch)
            mine = (
                meta["dataset"],
                meta["num_classes"],
                meta["in_channels"],
                tuple(meta["image_size"]),
                tuple(meta["class_names"]),
                tuple(meta["mean"]),
                tuple(meta["std"]),
            )
            theirs = (
                info.name,
                info.num_classes,
                info.channels,
                tuple(info.image_size),
                tuple(info.class_names),
                tuple(info.mean),
                tuple(info.std),
            )
            if mine != theirs:
                raise CompatibilityError(
                    f"teacher '{arch}' in {self.directory} was trained on {meta['dataset']} "
                    f"({meta['num_classes']} classes, {meta['in_channels']}x"
                    f"{meta['image_size']}) with other classes or normalisation than "
                    f"'{info.name}'; train teachers for this dataset (`datadistill teachers`)"
                )


def prepare_infer_data(cfg: InferConfig, progress: bool = False) -> RealData:
    """The real data INFER works on: ``prepare`` with ``cfg.mean``/``cfg.std`` when set.

    Example:
        >>> prepare_infer_data(InferConfig.of(dataset="digits", mean=[0.5], std=[0.5])).info.mean
        (0.5,)
    """
    src = cfg.data
    data = prepare(src.dataset, src.data_root, download=src.download, progress=progress,
                   train_per_class=src.train_per_class)
    if cfg.mean is not None:
        data = renormalize(data, tuple(cfg.mean), tuple(cfg.std))
    return data


@locks_output("out_dir")
def train_teachers(cfg: InferConfig, out_dir: str | Path, progress: bool = False) -> TeacherStore:
    """Train every teacher of ``cfg.teachers.archs`` into the store at ``out_dir``.

    Finished teachers are skipped (after checking they were made with the same recipe); an
    interrupted teacher resumes from its last epoch. Teacher i uses seeds derived from
    ``(cfg.teachers.seed, i)``, so under torchrun :func:`datadistill.runs.run_all` deals the
    missing teachers out in rounds (rank r trains r, r+K, ...; each writes its own teacher's
    folder, atomically) and the store equals a single-process one; every rank returns once all
    are written.

    Example:
        >>> cfg = InferConfig.of(dataset="digits",
        ...                      teachers=TeacherConfig(epochs=2, width_mult=0.25))
        >>> store = train_teachers(cfg, "runs/digits_teachers")           # doctest: +SKIP
    """
    if cfg.teachers.checkpoints:
        raise ConfigError("this config reads pretrained teachers from teachers.checkpoints "
                          "(ImageNet); there is nothing to train: run `datadistill infer`")
    data = prepare_infer_data(cfg, progress)
    info, tc, store = data.info, cfg.teachers, TeacherStore(out_dir)
    flip = uses_flip(info.dsa_strategy, tc.flip)
    archs = list(tc.archs)
    recipes = [teacher_recipe(arch, info, tc, flip) | {"train_per_class": cfg.data.train_per_class}
               for arch in archs]
    for arch, recipe in zip(archs, recipes, strict=True):
        if store.has(arch):
            _check_recipe(store, arch, recipe)
            log.info("teacher %s already trained in %s; skipping", arch, store.directory)

    def one_teacher(run: Run) -> None:  # seeds from its index alone; each rank saves its own
        _train_one(cfg, data, store, run, recipes[run.index], progress)

    # The missing teachers in rounds of K processes (rank r: the round's r-th); every rank
    # returns once all are on disk.
    run_all(len(archs), one_teacher, seed=tc.seed, done=OnDisk(lambda i: store.has(archs[i])))
    return store


def _train_one(cfg: InferConfig, data, store: TeacherStore, run: Run, recipe: dict,
               progress: bool) -> None:
    """Train teacher ``run.index`` (seeds from its index alone) and save it with its recipe."""
    tc, info, arch = cfg.teachers, data.info, recipe["arch"]
    net = seeded(lambda: create_teacher(arch, info.channels, info.num_classes, info.image_size,
                                        tc.width_mult), run.init_seed)
    train_teacher(net, data.train, cfg=tc, flip=recipe["flip"], seed=run.train_seed,
                  device=cfg.device, progress=progress,  # its line names the architecture
                  checkpoint=TeacherCheckpoint(store.directory / arch / CHECKPOINT_FILE, recipe))
    acc = test_accuracy(net, data.test.images, data.test.labels, tc.test_batch_size, cfg.device)
    log.info("teacher %s: test accuracy %.4f", arch, acc)
    store.save(net, {**recipe, "class_names": list(info.class_names), "mean": list(info.mean),
                     "std": list(info.std), "test_accuracy": acc, "version": __version__,
                     **distributed.metadata()})


def _check_recipe(store: TeacherStore, arch: str, recipe: dict) -> None:
    check_saved_config(store.meta(arch), recipe, store.directory / arch,
                       what="teacher recipe", fix=f"use another output folder or delete {arch}/")
