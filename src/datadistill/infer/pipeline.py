"""The INFER recipe: class groups -> compensators -> static labels -> stored set -> students.

INFER (Zhang et al., "Breaking Class Barriers: Efficient Dataset Distillation via Inter-Class
Feature Compensator", ICLR 2025), Algorithm 1:

1. K = int(IPC / (M/C + 1)) class groups of one real image per class, sampled without
   replacement (``compensators.sample_class_groups``);
2. for every group and every teacher m, one shared compensator u_{k,m}
   (``compensators.generate_compensators``);
3. static labels: the teachers' mean logits on each of the K*(M+1)*C instances
   (``labels.ensemble_logits``);
4. store base images + compensators + labels (``store.save_infer_set``);
5. optionally train students the INFER way (``student.evaluate_student``).

Example:
    >>> cfg = InferConfig.of(dataset="cifar100", ipc=10, teacher_dir="runs/c100_teachers")
    >>> result = run_infer(cfg, "runs/c100_infer_ipc10", progress=True)    # doctest: +SKIP
    >>> print(result.report)                                               # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from datadistill import distributed
from datadistill.artifacts.distilled import DistilledSet
from datadistill.config import config_to_dict
from datadistill.data import DatasetInfo, ImageSet, random_subset
from datadistill.errors import ArtifactError, CompatibilityError, ConfigError
from datadistill.evaluation.protocols import EvalReport
from datadistill.infer.compensators import (
    CompensatorSettings,
    generate_compensators,
    sample_class_groups,
)
from datadistill.infer.config import InferConfig, num_groups
from datadistill.infer.imagenet import check_checkpoints, load_checkpoint_teachers
from datadistill.infer.instances import LazyInstances
from datadistill.infer.labels import ensemble_logits
from datadistill.infer.store import InferSet, load_infer_set, save_infer_set
from datadistill.infer.student import evaluate_student
from datadistill.infer.teachers_train import TeacherStore, prepare_infer_data
from datadistill.infer.transforms import pixels_at
from datadistill.io import load_tensors, save_tensors, write_report
from datadistill.report.figures import register_set_view
from datadistill.report.page import write_report as write_page
from datadistill.runtime.lock import locks_output

log = logging.getLogger(__name__)

REPORT_FILE = "eval_infer.json"
# the compensators finished so far (after each class group), so a killed run resumes there
COMPENSATOR_PROGRESS = "compensators_progress.pt"

def infer_instances(directory: Path) -> DistilledSet:
    """The materialised INFER set in ``directory`` with class-index labels (labels may not be
    computed yet): what the report draws for an INFER run. Its ``extra`` names the grid's
    columns (``grid_columns``: per class group, ``base`` then ``base + u<m>`` for teacher m's
    compensator), says what they are (``grid_legend``) and how many make a group
    (``grid_group``: the page shows whole groups)."""
    s = load_infer_set(directory)
    inst = s.materialise()
    columns = [f"base + u{v}" if v else "base" for _ in range(s.num_groups)
               for v in range(s.num_teachers + 1)]  # materialise()'s order within a class
    teachers = ", ".join(f"u{m + 1}: {arch}" for m, arch in enumerate(s.teachers))
    legend = (f"Each row is a class; each class group (of {s.num_groups}) gives its base image "
              f"(a real image) and base + u<m>, the base plus the compensator learned with "
              f"teacher m ({teachers}).")
    return DistilledSet(inst.images, inst.labels, None, s.info, "normalized",
                        s.instances_per_class, "infer",
                        extra={"grid_columns": columns, "grid_legend": legend,
                               "grid_group": s.num_teachers + 1})


register_set_view("infer", infer_instances)


@dataclass
class InferResult:
    """What :func:`run_infer` produced: the set, where it lies, and the student report."""

    infer_set: InferSet
    path: Path
    report: EvalReport | None


def distill_infer(
    cfg: InferConfig,
    train: ImageSet,
    teachers: list[nn.Module],
    teacher_names: list[str],
    progress: bool = False,
    checkpoint: Path | None = None,
) -> InferSet:
    """Steps 1-3 on a normalised training split with loaded teachers (on ``cfg.device``).

    With ``checkpoint`` (a file), the compensators are saved after every class group and a
    rerun of the same work resumes there (:func:`_resumable_compensators`).

    Example:
        >>> s = distill_infer(cfg, real.train, teachers, cfg.teachers.archs)  # doctest: +SKIP
    """
    if train.space != "normalized":
        raise CompatibilityError(
            f"INFER works on normalised images, got {train.space!r}; "
            "prepare the data with zca=False"
        )
    info = train.info
    k = num_groups(cfg.ipc, len(teachers), info.num_classes)
    generator = torch.Generator().manual_seed(cfg.seed)
    groups = sample_class_groups(train.images, train.labels, info.num_classes, k, generator)
    log.info(
        "INFER %s ipc %d: %d groups x (1 + %d teachers) -> %d instances per class",
        info.name,
        cfg.ipc,
        k,
        len(teachers),
        k * (len(teachers) + 1),
    )
    # the jitter resolved for this image size, as the stored set records it
    settings = replace(cfg.compensator, jitter=pixels_at(info.image_size, cfg.compensator.jitter))
    comps = _resumable_compensators(cfg, teachers, teacher_names, groups, settings, generator,
                                    progress, checkpoint)
    infer_set = InferSet(
        base=groups.images.cpu(),
        compensators=comps.cpu(),
        labels=None,
        info=info,
        ipc=cfg.ipc,
        teachers=list(teacher_names),
        source_indices=groups.indices,
        config=config_to_dict(cfg),
        extra={"jitter": settings.jitter},
    )
    instances = LazyInstances(infer_set)  # (C*K*(M+1), Ch, H, W), built per batch
    infer_set.labels = ensemble_logits(teachers, instances, cfg.label_batch_size,
                                       progress=progress).cpu()
    return infer_set


def _resumable_compensators(cfg: InferConfig, teachers: list[nn.Module], names: list[str],
                            groups, settings: CompensatorSettings, generator: torch.Generator,
                            progress: bool, checkpoint: Path | None) -> torch.Tensor:
    """:func:`generate_compensators`, resumed from ``checkpoint`` and saved there after every
    class group (rank 0 writes)."""
    key = _compensator_key(cfg, names, groups.indices)
    resume = _load_progress(checkpoint, key, generator)
    save = None
    if checkpoint is not None and distributed.is_main():
        def save(done: int, out: torch.Tensor) -> None:
            save_tensors({"key": key, "done": done, "compensators": out.detach().cpu(),
                          "generator": generator.get_state()}, checkpoint)
    return generate_compensators(teachers, groups.images.to(cfg.device), settings, generator,
                                 progress, resume=resume, on_group=save)


def _compensator_key(cfg: InferConfig, teachers: list[str], indices: torch.Tensor) -> str:
    """What the compensators depend on: the config less the student section, the teachers,
    and the real images of the groups."""
    import hashlib
    import json

    settings = {k: v for k, v in config_to_dict(cfg).items() if k not in ("student", "device")}
    text = json.dumps([settings, list(teachers), indices.tolist()], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _load_progress(path: Path | None, key: str, generator: torch.Generator
                   ) -> tuple[int, torch.Tensor] | None:
    """(groups done, compensators) saved by an interrupted run of the same work, with
    ``generator`` set to its state then; None when there is nothing to resume."""
    if path is None or not Path(path).is_file():
        return None
    try:
        saved = load_tensors(path)
        if saved["key"] != key:
            log.info("%s is from another config or other teachers: starting over", path)
            return None
        generator.set_state(saved["generator"])
        done, comps = int(saved["done"]), saved["compensators"]
    except (ArtifactError, KeyError, TypeError, RuntimeError) as err:
        log.warning("ignoring the unreadable compensator progress %s (%s)", path, err)
        return None
    log.info("resuming the compensators after %d finished class groups (%s)", done, path)
    return done, comps


def random_soft_subset(
    train: ImageSet,
    ipc: int,
    teachers: list[nn.Module],
    generator: torch.Generator | None = None,
    label_batch_size: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The baseline INFER should beat: ``ipc`` random real images per class labelled with the
    same static soft labels (the teachers' mean logits), as (images, logits).

    Example:
        >>> x, z = random_soft_subset(real.train, 10, teachers)            # doctest: +SKIP
    """

    images, _ = random_subset(train, ipc, generator)
    device = next(teachers[0].parameters()).device
    logits = ensemble_logits(teachers, images.to(device), label_batch_size).cpu()
    return images.cpu(), logits


def load_teachers(
    cfg: InferConfig, teacher_dir: str | Path | None, info: DatasetInfo
) -> tuple[list[nn.Module], list[str]]:
    """The teachers named by ``cfg.teachers.archs`` from the store, checked against ``info``."""
    if cfg.teachers.checkpoints:  # ImageNet: the user's pretrained torchvision weights
        archs = list(cfg.teachers.archs)
        return load_checkpoint_teachers(cfg.teachers.checkpoints, archs, info.num_classes,
                                        cfg.device), archs
    directory = teacher_dir if teacher_dir is not None else cfg.teacher_dir
    if directory is None:
        raise ConfigError(
            "no teacher store given; train teachers with `datadistill teachers` and set "
            "teacher_dir=<that folder>"
        )
    store = TeacherStore(directory)
    archs = list(cfg.teachers.archs)
    store.check_compatible(info, archs)  # also raises when one is missing
    return [store.load(a, cfg.device) for a in archs], archs


def labelling_teachers(cfg: InferConfig, teachers: list[nn.Module], names: list[str]
                       ) -> list[nn.Module]:
    """The teachers that label dynamically: ``cfg.student.dynamic_teachers`` (SRe2L: the
    ResNet-18 alone), else all M."""
    keep = cfg.student.dynamic_teachers
    if not keep:
        return list(teachers)
    return [t for t, n in zip(teachers, names, strict=True) if n in keep]


@locks_output("out_dir")
def run_infer(
    cfg: InferConfig,
    out_dir: str | Path,
    progress: bool = False,
    teacher_dir: str | Path | None = None,
) -> InferResult:
    """Distil with INFER, save the set to ``out_dir``, and evaluate ``cfg.student.num_runs``
    students (report also written to ``out_dir/eval_infer.json``).

    ``teacher_dir`` overrides ``cfg.teacher_dir``. Example in the module docstring.
    """

    t0 = time.perf_counter()
    if cfg.teachers.checkpoints:  # missing files are found before the data is decoded
        check_checkpoints(cfg.teachers.checkpoints, list(cfg.teachers.archs))
    data = prepare_infer_data(cfg, progress)
    teachers, names = load_teachers(cfg, teacher_dir, data.info)
    progress_file = Path(out_dir) / COMPENSATOR_PROGRESS
    infer_set = distill_infer(cfg, data.train, teachers, names, progress, progress_file)
    main = distributed.is_main()  # under torchrun every rank computes, rank 0 writes
    path = save_infer_set(infer_set, out_dir) if main else Path(out_dir)
    storage = infer_set.storage()
    log.info(
        "stored %d image-units (budget %d) + label table of %d bytes in %s",
        storage.image_units,
        storage.budget_units,
        storage.label_bytes,
        path,
    )
    report = None
    if cfg.student.num_runs > 0:
        dynamic = cfg.student.labels == "dynamic"
        report = evaluate_student(
            infer_set,
            data.test,
            cfg.student,
            teachers=labelling_teachers(cfg, teachers, names) if dynamic else None,
            seed=cfg.seed,
            device=cfg.device,
            progress=progress,
        )
        if main:
            write_report({**report.to_dict(), **distributed.metadata()},
                         Path(out_dir) / REPORT_FILE)
        log.info(
            "INFER student: %s (best-of-periodic %.2f %%)",
            report,
            100 * report.settings["best_mean"],
        )
    if main:
        write_page(out_dir, stage="infer", seconds=time.perf_counter() - t0)  # never raises
    return InferResult(infer_set, path, report)
