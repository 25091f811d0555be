"""Train and test a student on an INFER set the way INFER evaluates it.

Official ``ufc_validation/val_static.py`` / ``val_dyn.py`` (INFER, Zhang et al., ICLR 2025):
student = CIFAR ResNet-18; per batch RandomCrop(pad 4) + horizontal flip, then mixup with one
lambda ~ Beta(0.8, 0.8) and a permutation; target = the stored ensemble logits interpolated
with the same lambda (static) or the teachers' mean logits on the mixed batch (dynamic);
loss KL(log_softmax(s/T), softmax(t/T)), batchmean, T = 30; AdamW lr 1e-3, weight decay
0.01, cosine annealing over the epochs (stepped per epoch); batch 64; 400 epochs static,
80 dynamic. The scripts test at epochs 0, 10, 20, ... and the last, and report the best
accuracy; we report the last-epoch accuracy as the main number and the best-of-periodic one
beside it (``settings["best_*"]``).

The set can also be evaluated with the field's classic protocol (SGD, hard or soft-CE
labels, DSA) through :func:`evaluate_classic`.

Example:
    >>> report = evaluate_student(infer_set, real.test, StudentConfig(epochs=400))  # doctest: +SKIP
    >>> report.mean, report.settings["best_mean"]                                  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from datadistill import distributed
from datadistill.data import DatasetInfo, ImageSet
from datadistill.errors import CompatibilityError, ConfigError
from datadistill.evaluation.protocols import EvalReport, evaluate_distilled
from datadistill.infer.config import StudentConfig
from datadistill.infer.imagenet import sample_cutmix, sample_resized_crop_flip
from datadistill.infer.instances import LazyInstances
from datadistill.infer.labels import ensemble_logits, kd_loss, sample_mixup
from datadistill.infer.store import InferSet
from datadistill.infer.transforms import black_level, crop_flip, pixels_at, uses_flip
from datadistill.models import teachers as _teachers  # noqa: F401  registers INFER's teachers
from datadistill.runs import Run, run_all
from datadistill.training import (
    Augment,
    EpochEnd,
    FitHooks,
    FitOptions,
    build_model,
    cosine_schedule,
    fit,
    test_accuracy,
)

log = logging.getLogger(__name__)


@dataclass
class StudentRun:
    """One trained student: last-epoch and best periodic test accuracy (fractions)."""

    final_accuracy: float
    best_accuracy: float
    history: list[tuple[int, float]] = field(default_factory=list)  # (epoch, accuracy)


def build_student(name: str, info: DatasetInfo, model_kwargs: dict | None = None) -> nn.Module:
    """Any ``create_model`` name; INFER's teachers (e.g. ``resnet18_cifar``, its default
    student) are registered there by ``datadistill.models.teachers``."""
    return build_model(name, info, model_kwargs=model_kwargs)


def _augment(xb: torch.Tensor, cfg: StudentConfig, padding: int, fill: torch.Tensor, flip: bool,
             generator: torch.Generator | None) -> torch.Tensor:
    """INFER's RandomCrop(pad) + flip, or SRe2L's per-sample RandomResizedCrop + flip."""
    if cfg.augment == "resized_crop_flip":
        return sample_resized_crop_flip(xb, generator)
    return crop_flip(xb, padding, fill, flip, generator)


def _sample_mix(xb: torch.Tensor, cfg: StudentConfig, generator: torch.Generator | None):
    """One mixup (INFER) or CutMix (SRe2L) draw for the batch; both mix logits linearly."""
    if cfg.mix == "cutmix":
        return sample_cutmix(len(xb), xb.shape[-2], xb.shape[-1], cfg.cutmix_beta, generator)
    return sample_mixup(len(xb), cfg.mixup_alpha, generator)


def _student_augment(cfg: StudentConfig, info: DatasetInfo,
                     teachers: list[nn.Module] | None) -> Augment:
    """Crop/flip, then one mixup/CutMix draw per batch; the targets are the stored logits
    mixed with the same lambda (static) or the teachers' mean logits on the mixed images
    (dynamic, ``targets`` None)."""
    fill = black_level(info.mean, info.std)
    flip = uses_flip(info.dsa_strategy, cfg.flip)
    padding = pixels_at(info.image_size, cfg.crop_padding)

    def augment(xb: torch.Tensor, zb: torch.Tensor | None, generator: torch.Generator | None):
        xb = _augment(xb, cfg, padding, fill, flip, generator)  # (B, C, H, W)
        mix = _sample_mix(xb, cfg, generator)
        xb = mix.apply(xb)
        if zb is not None:
            return xb, mix.apply(zb)  # lambda z_i + (1 - lambda) z_perm(i), before softmax
        return xb, ensemble_logits(teachers, xb, batch_size=len(xb))  # (B, classes)

    return augment


def train_student(
    net: nn.Module,
    images: torch.Tensor,
    test: ImageSet,
    cfg: StudentConfig,
    labels: torch.Tensor | Sequence[nn.Module],
    *,
    generator: torch.Generator | None = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> StudentRun:
    """Train ``net`` in place on ``images`` (N, C, H, W) with INFER's KD recipe and test it.

    ``labels`` are the static logits (N, classes), or the teachers (dynamic labels, queried
    on every batch); the epoch count is ``cfg.epochs`` or ``cfg.dynamic_epochs`` accordingly.
    """
    static = isinstance(labels, torch.Tensor)
    if not static and not labels:
        raise ConfigError("give the static logits (N, classes) or the teachers (dynamic labels)")
    static_logits, teachers = (labels, None) if static else (None, list(labels))
    epochs = cfg.epochs if static else cfg.dynamic_epochs
    net.to(device)
    x = images.to(device)  # (N, C, H, W), the set is small: keep it on the device
    z = static_logits.to(device) if static_logits is not None else None  # (N, classes)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    history: list[tuple[int, float]] = []

    def test_now(end: EpochEnd) -> None:
        if end.epoch % cfg.eval_every == 0 or end.epoch == epochs - 1:
            acc = test_accuracy(net, test.images, test.labels, cfg.test_batch_size, device)
            history.append((end.epoch, acc))
            log.debug("student epoch %d: loss %.4f, test accuracy %.4f", end.epoch,
                      end.mean_loss, acc)

    fit(net, x, z, opt,
        FitOptions(epochs=epochs, batch_size=cfg.batch_size, device=device, drop_single=True,
                   progress=progress, desc="student", stage=True),
        FitHooks(loss=lambda s, t: kd_loss(s, t, cfg.temperature),
                 augment=_student_augment(cfg, test.info, teachers),
                 schedule=cosine_schedule(opt, epochs)[0], after_epoch=test_now),
        generator=generator)
    if not history:  # epochs == 0: the untrained network
        history.append(
            (0, test_accuracy(net, test.images, test.labels, cfg.test_batch_size, device))
        )
    return StudentRun(history[-1][1], max(a for _, a in history), history)


def evaluate_student(
    infer_set: InferSet,
    test: ImageSet,
    cfg: StudentConfig,
    *,
    teachers: list[nn.Module] | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> EvalReport:
    """``cfg.num_runs`` fresh students trained on the materialised set; an EvalReport whose
    ``accuracies`` are last-epoch accuracies and whose ``settings`` hold the best-of-periodic
    ones (``best_accuracies``, ``best_mean``, ``best_std``) that INFER's scripts report.

    Dynamic labels (``cfg.labels == "dynamic"``) need the ``teachers``.
    """
    if test.space != "normalized" or test.info.name != infer_set.info.name:
        raise CompatibilityError(
            f"the test set is {test.info.name!r} in {test.space!r} space, the INFER set is "
            f"{infer_set.info.name!r} in normalized space; prepare the same dataset with zca=False"
        )
    if (test.info.mean, test.info.std) != (infer_set.info.mean, infer_set.info.std):
        raise CompatibilityError(
            f"the test set is normalised with mean {test.info.mean} / std {test.info.std}, the "
            f"INFER set with {infer_set.info.mean} / {infer_set.info.std}; renormalize the test "
            "data (datadistill.data.renormalize) with the set's statistics")
    if cfg.labels != "dynamic" and infer_set.labels is None:
        raise ConfigError("static labels are missing from this INFER set; use labels='dynamic'")
    images = LazyInstances(infer_set)  # the materialised rows, built per batch
    return evaluate_student_images(images, infer_set.labels, test, cfg, teachers=teachers,
                                   seed=seed, device=device, progress=progress)


def evaluate_student_images(
    images: torch.Tensor,
    static_logits: torch.Tensor | None,
    test: ImageSet,
    cfg: StudentConfig,
    *,
    teachers: list[nn.Module] | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> EvalReport:
    """:func:`evaluate_student` on any images (N, C, H, W) in the test set's normalised space,
    e.g. a random real subset labelled by the same teachers (INFER's fair baseline).

    ``static_logits`` (N, classes) are used when ``cfg.labels`` is static; dynamic labels
    query ``teachers`` on every batch.
    """
    dynamic = cfg.labels == "dynamic"
    if dynamic and not teachers:
        raise ConfigError("student.labels='dynamic' needs the teachers; pass teachers=...")
    if not dynamic and static_logits is None:
        raise ConfigError("static labels are missing; give static_logits or use labels='dynamic'")
    if not dynamic and static_logits.shape != (len(images), test.info.num_classes):
        raise ConfigError(f"static_logits have shape {tuple(static_logits.shape)}, expected "
                          f"({len(images)}, {test.info.num_classes}): one row per image")
    test_dev = test.to(device)

    def one_run(run: Run) -> StudentRun:
        net = build_model(cfg, test.info, run.init_seed)
        result = train_student(
            net, images, test_dev, cfg, teachers if dynamic else static_logits,
            generator=torch.Generator().manual_seed(run.train_seed),
            device=device, progress=progress,
        )
        log.info("INFER student run %d/%d: final %.4f, best %.4f", run.index + 1, cfg.num_runs,
                 result.final_accuracy, result.best_accuracy)
        return result

    runs = run_all(cfg.num_runs, one_run, seed=seed).values
    best = [run.best_accuracy for run in runs]
    settings = {
        **asdict(cfg),
        "seed": seed,
        "device": str(device),
        **distributed.metadata(),  # how many processes shared the runs
        "dataset": test.info.name,
        "n_images": int(images.shape[0]),
        "accuracies_are": "last epoch",
        "best_accuracies": best,
        "best_mean": float(np.mean(best)),
        "best_std": float(np.std(best)),
        "history": [run.history for run in runs],
        "best_is": f"max over test epochs 0, {cfg.eval_every}, ... and the last",
    }
    return EvalReport.from_accuracies(
        f"infer_{cfg.labels}", cfg.model, [run.final_accuracy for run in runs], settings
    )


def evaluate_classic(infer_set: InferSet, test: ImageSet, **kwargs) -> EvalReport:
    """The materialised set (soft logits) under the field's classic protocol.

    ``kwargs`` go to :func:`datadistill.evaluation.protocols.evaluate_distilled`
    (``model``, ``epochs``, ``num_runs``, ``hard_labels=True`` for argmax labels, ...).

    Example:
        >>> evaluate_classic(s, real.test, model="convnet", epochs=300)     # doctest: +SKIP
    """
    return evaluate_distilled(infer_set.to_distilled(), test, **kwargs)
