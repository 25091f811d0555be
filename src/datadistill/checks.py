"""Checks that run before any work starts, so a bad setting fails in seconds, not hours.

Every command runs the checks that apply to it before it trains anything, and ``datadistill
validate`` runs all of them: learning rates, batch sizes and epoch counts in range, the
matching window inside the expert trajectories, the requested device present, IPC within the
smallest class, images finite. Each failure is a :class:`ConfigError` (CLI exit status 2)
whose one-line message names the setting and the fix.

Example:
    >>> check_positive("distill.lr_img", 100.0)
    >>> check_positive("distill.lr_img", -1.0)
    Traceback (most recent call last):
    ...
    datadistill.errors.ConfigError: distill.lr_img must be > 0, got -1.0; set a positive value
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch

from datadistill.data import create_dataset
from datadistill.data.registry import _spec
from datadistill.errors import CompatibilityError, ConfigError, DatasetError
from datadistill.experts.store import required_epochs
from datadistill.models.registry import create_model, model_entry


def check_positive(name: str, value: Any, *, allow_zero: bool = False) -> None:
    """``value`` is a finite number > 0 (>= 0 with ``allow_zero``)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{name} must be {bound}, got {value!r}; set a "
                          f"{'non-negative' if allow_zero else 'positive'} value")


def check_count(name: str, value: Any, minimum: int) -> None:
    """``value`` is an integer >= ``minimum``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


def check_device(device: str | torch.device) -> None:
    """The device exists on this machine (``cuda`` needs a visible CUDA GPU)."""
    text = str(device)
    kind = text.split(":")[0]
    if kind == "cuda":
        index = int(text.split(":")[1]) if ":" in text and text.split(":")[1].isdigit() else 0
        if not torch.cuda.is_available():
            raise ConfigError(f"device={text} but no CUDA GPU is available here; set "
                              "device=cpu (or device=auto)")
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device={text} but only {torch.cuda.device_count()} CUDA "
                              "device(s) are visible; pick one of them")
    elif kind == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"device={text} but MPS is not available here; set device=cpu")
    elif kind != "cpu":
        raise ConfigError(f"device={text!r} is not a device; use cpu, cuda, cuda:N or auto")


def check_window(max_start_epoch: int, expert_epochs: int, epochs: int, where: str,
                 error: type[Exception] = CompatibilityError) -> None:
    """The matching window fits a trajectory of ``epochs`` epochs (the one rule:
    :func:`datadistill.experts.store.required_epochs`); ``error`` is raised otherwise
    (ConfigError when two sections of one config disagree)."""

    need = required_epochs(max_start_epoch, expert_epochs)
    if need > epochs:
        raise error(
            f"distill.max_start_epoch ({max_start_epoch}) - 1 + distill.expert_epochs "
            f"({expert_epochs}) = {need} expert epochs are needed (max_start_epoch + "
            f"expert_epochs <= expert epochs + 1), but {where} {epochs}; raise "
            f"experts.epochs to at least {need} or lower distill.max_start_epoch")


def check_ipc_fits(ipc: int, labels: torch.Tensor, class_names: tuple[str, ...]) -> None:
    """Every class has at least ``ipc`` training images (labels: (N,) class indices)."""
    counts = torch.bincount(labels.cpu(), minlength=len(class_names))  # (K,)
    smallest = int(counts.argmin())
    if int(counts[smallest]) < ipc:
        raise ConfigError(f"ipc={ipc} but class {smallest} ({class_names[smallest]!r}) has "
                          f"only {int(counts[smallest])} training images; lower ipc to at most "
                          f"{int(counts[smallest])}")


# Normalised pixels lie within about +-3, ZCA-whitened ones within some tens: a value beyond
# this is no image (a set of 3e38s trains to NaN and scored chance, 10 %, without a word).
MAX_PIXEL = 1e6


def check_finite(images: torch.Tensor, what: str = "the images") -> None:
    """No NaN or Inf pixel and none beyond :data:`MAX_PIXEL` in magnitude (a NaN set trains
    nothing and scores chance silently)."""
    if not images.is_floating_point():
        return
    bad = int((~torch.isfinite(images)).sum())
    if bad:
        raise ConfigError(f"{what} hold {bad} NaN/Inf values; the set is corrupt: re-export "
                          "it, or take best/ or last/ of a run that finished cleanly")
    huge = int((images.abs() > MAX_PIXEL).sum())
    if huge:
        raise ConfigError(f"{what} hold {huge} values beyond +-{MAX_PIXEL:g} (largest "
                          f"{float(images.abs().max()):.3g}), which no image in normalised or ZCA "
                          "space has; the set is corrupt: re-export it")


def check_training(*, lr: float, num_runs: int, epochs: int, batch_size: int) -> None:
    """The numbers of an evaluation: fresh networks trained `epochs` epochs at `lr`."""
    check_positive("the evaluation lr", lr)
    check_count("the number of evaluation runs", num_runs, 1)
    check_count("the evaluation epochs", epochs, 0)
    check_count("the evaluation batch size", batch_size, 1)


def check_distill(dcfg: Any) -> None:
    """Learning rates and evaluation sizes of a :class:`DistillConfig`."""
    check_positive("distill.lr_img", dcfg.lr_img)
    check_positive("distill.lr_lr", dcfg.lr_lr, allow_zero=True)  # 0: a fixed step size
    if dcfg.labels.label_mode == "soft":
        check_positive("distill.lr_y", dcfg.labels.lr_y)
    check_count("distill.eval_batch", dcfg.eval_batch, 1)
    check_count("distill.eval_epochs", dcfg.eval_epochs, 0)
    check_device(dcfg.device)


def check_names(dataset: str, model: str) -> None:
    """The dataset and the model are registered (their errors list the valid names)."""

    _spec(dataset)
    model_entry(model)


def check_model(dataset: str, model: str, model_kwargs: dict | None) -> None:
    """``model`` with ``model_kwargs`` can be built for ``dataset`` (unknown or out-of-range
    arguments fail here, not after the experts are trained). Built on the meta device: no
    memory, no random draws. A folder dataset (size unknown without its files) is checked
    for the argument names only."""

    if not isinstance(model_kwargs, dict):
        raise ConfigError(f"model_kwargs must be a mapping such as {{width: 64}}, got "
                          f"{model_kwargs!r}")
    info = _spec(dataset)[1].info
    channels, classes, size = ((info.channels, info.num_classes, info.image_size)
                               if info is not None else (3, 2, (32, 32)))
    try:
        with torch.device("meta"):
            create_model(model, channels, classes, size, **model_kwargs)
    except ConfigError as err:
        if info is not None or "unknown kwargs" in str(err):
            raise ConfigError(f"model_kwargs: {err}") from None
    except (TypeError, ValueError, RuntimeError) as err:
        if info is not None:
            raise ConfigError(f"model {model!r} cannot be built with model_kwargs "
                              f"{model_kwargs} ({err}); fix model_kwargs") from None


def check_run_context(cfg: Any) -> None:
    """The keys every stage shares: names, model arguments, seed, device."""
    check_names(cfg.dataset, cfg.model)
    check_model(cfg.dataset, cfg.model, cfg.model_kwargs)
    check_count("seed", cfg.seed, 0)


def check_experts(ecfg: Any) -> None:
    """The SGD of the expert trajectories (finite numbers, no negative momentum or decay)."""
    check_positive("experts.lr", ecfg.lr)
    check_positive("experts.momentum", ecfg.momentum, allow_zero=True)
    check_positive("experts.weight_decay", ecfg.weight_decay, allow_zero=True)


def check_pipeline(cfg: Any, ecfg: Any, dcfg: Any, *, window: bool = True) -> None:
    """Everything about a pipeline config that can be checked without data: the one check
    `validate`, `run`, `experts` and `distill` all make."""
    check_run_context(cfg)
    check_experts(ecfg)
    if dcfg.max_experts is not None:
        check_count("distill.max_experts", dcfg.max_experts, 1)
    check_count("ipc", cfg.ipc, 1)
    check_device(cfg.resolved_device())
    check_distill(dcfg)
    ev = cfg.evaluation
    check_count("evaluation.runs", ev.runs, 1)
    check_count("evaluation.epochs", ev.epochs, 0)
    check_count("evaluation.batch_size", ev.batch_size, 1)
    if window:
        check_window(dcfg.window.max_start_epoch, dcfg.window.expert_epochs, ecfg.epochs,
                     "experts.epochs is", ConfigError)


def check_infer(cfg: Any) -> None:
    """Learning rates, sizes and device of an :class:`InferConfig`."""
    check_names(cfg.data.dataset, cfg.student.model)
    check_count("seed", cfg.seed, 0)
    check_device(cfg.device)
    check_positive("lr", cfg.compensator.lr)
    for section in ("teachers", "student"):
        sub = getattr(cfg, section)
        check_positive(f"{section}.lr", sub.lr)
        check_count(f"{section}.epochs", sub.epochs, 1 if section == "teachers" else 0)
        check_count(f"{section}.batch_size", sub.batch_size, 1)
    check_count("student.num_runs", cfg.student.num_runs, 0)


def check_eval_args(args: Any) -> None:
    """The numbers given to `eval` / `baseline` on the command line (None: the protocol's own)."""
    if args.runs is not None:
        check_count("--runs", args.runs, 1)
    if args.epochs is not None:
        check_count("--epochs", args.epochs, 0)
    if getattr(args, "lr", None) is not None:
        check_positive("--lr", args.lr)
    if getattr(args, "ipc", None) is not None:
        check_count("--ipc", args.ipc, 1)
    check_device(args.device)


def check_ipc_for_dataset(ipc: int, dataset: str, root: Any, train_per_class: int | None,
                          download: bool = False) -> str | None:
    """IPC against the smallest class of the (subset) training split, from its labels alone.

    Returns a note when the dataset files are not there to check (``validate`` prints it).
    """

    if train_per_class is not None and train_per_class < ipc:
        raise ConfigError(f"ipc={ipc} but train_per_class={train_per_class} keeps fewer images "
                          f"per class; lower ipc to at most {train_per_class}")
    try:
        train = create_dataset(dataset, root, "train", download=download)
    except DatasetError as err:
        return f"ipc not checked against the class sizes: {err}"
    check_ipc_fits(ipc, train.labels, train.info.class_names)
    return None


def _resolved(path: Path, what: str) -> Path:
    """``path`` with its links followed; a symlink loop is a ConfigError."""
    try:
        return Path(path).resolve(strict=False)
    except (RuntimeError, OSError) as err:  # "Symlink loop", ELOOP
        reason = getattr(err, "strerror", None) or err
        raise ConfigError(f"{what} {path} cannot be reached ({reason}; a symbolic link loop?); "
                          f"choose another {what}") from None


def _writable_place(real: Path, shown: str, what: str) -> None:
    """``real`` (an existing folder, or the new name of one) can be written: the folder itself
    or, while it does not exist, its nearest existing ancestor. Nothing is created."""
    place = real
    while not place.exists():
        place = place.parent
    if place == Path("/proc") or Path("/proc") in place.parents:
        raise ConfigError(f"{shown} cannot be written: /proc holds no files; choose another "
                          f"{what}")
    if not place.is_dir():
        raise ConfigError(f"{shown} cannot be written: {place} is a file, not a writable folder; "
                          f"choose another {what}")
    if not os.access(place, os.W_OK | os.X_OK):
        raise ConfigError(f"{shown} cannot be written: {place} is not writable (read-only "
                          f"file system or permissions); choose another {what}")


def check_output_folder(path: str | Path, what: str = "--out") -> Path:
    """The output folder ``path`` is a writable folder or can be made one, or a ConfigError
    names the problem: a file or a device in its place, a read-only file system, a link loop,
    /proc. Checked before any work and creating nothing, so a refused command leaves no trace
    and nothing computed is lost to it."""
    path = Path(path)
    real = _resolved(path, what)
    if real.exists() and not real.is_dir():
        raise ConfigError(f"{what} {path} is a file, not a folder; give a folder name")
    _writable_place(real, f"the output folder {path}", what)
    return path


def check_report_path(path: Path) -> None:
    """A report file can be written at ``path``: a regular file or a new name (never a folder,
    a device or a pipe, which the atomic write would replace), its folder creatable."""
    path = _resolved(path, "--out")
    if path.is_dir():
        raise ConfigError(f"--out {path} is a folder; give a file name such as {path}/eval.json")
    if path.exists():
        if not path.is_file():  # /dev/null, a FIFO: the rename would replace it with a file
            raise ConfigError(f"--out {path} is a device or a pipe, not a regular file; give a "
                              "file name such as eval.json")
        if not os.access(path, os.W_OK):
            raise ConfigError(f"cannot write the report {path} (not writable); choose another "
                              "--out")
        return
    _writable_place(path.parent, f"the report {path}", "--out")
