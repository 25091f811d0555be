"""Rebuild the outputs of a finished run (``best/``, ``last/``, ``eval.json``) from what it kept.

A finished ``datadistill run`` folder holds the distillation checkpoint (the final images,
labels and step size, and the best iteration), ``metrics.jsonl`` and the finished evaluation
networks (``eval_runs.jsonl``). From these, :func:`repair_run` restores damaged or deleted
outputs without redoing finished work:

- ``last/`` is the checkpoint's final state;
- ``best/`` is the same state when the best evaluation was the last one; otherwise the
  distillation is replayed from its seeds up to the best iteration (bitwise equal on CPU,
  without the evaluations);
- ``eval.json`` is rebuilt by the final evaluation, which takes every finished network from
  ``eval_runs.jsonl`` and trains only missing ones.

Rerunning ``datadistill run`` does the same (:func:`restore_outputs` runs after the
distillation stage); ``datadistill repair OUT`` (:func:`datadistill.tm.pipeline.repair_run`)
needs only the folder. This module sits below the pipeline: it never imports it.

Example:
    >>> restore_outputs(partial(distill_config, cfg), out, lambda: data)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from datadistill import distributed
from datadistill.artifacts.distilled import DistilledSet, load_distilled, save_distilled
from datadistill.config import config_asdict
from datadistill.errors import ArtifactError, DatadistillError
from datadistill.tm.checkpoint import _read_rows, load_checkpoint
from datadistill.tm.distill import distill

log = logging.getLogger(__name__)


def _readable(folder: Path) -> bool:

    try:
        load_distilled(folder)
        return True
    except DatadistillError:
        return False


def finished_state(stage_config: Callable[[str | None], Any], folder: Path):
    """The distillation stage's config (``stage_config(expert_dir)``, with the checkpoint's
    expert folder) and its finished checkpoint state."""

    state = load_checkpoint(folder / "checkpoint.pt")
    dcfg = stage_config(state.config.get("expert_dir"))
    if state.iteration != dcfg.iterations or state.evaluated != dcfg.iterations:
        raise ArtifactError(f"{folder} stopped at iteration {state.iteration} of "
                            f"{dcfg.iterations}; the run is not finished: rerun `datadistill "
                            "run` with the same config to resume it")
    return dcfg, state


def _save_state(state, data, dcfg, folder: Path, extra: dict) -> None:

    save_distilled(DistilledSet(images=state.images, labels=state.labels,
                                lr=float(state.syn_lr), info=data.info,
                                space=data.train.space, ipc=dcfg.ipc, method=dcfg.method,
                                zca=data.zca, config=config_asdict(dcfg), extra=extra),
                   folder)


def _replay_best(dcfg, data, distill_dir: Path, extra: dict, store) -> None:
    """Run the distillation again up to the best iteration and keep its images as best/."""

    replay = dataclasses.replace(dcfg, iterations=extra["iteration"], eval_runs=0, eval_every=0)
    scratch = distill_dir / ".replay"
    shutil.rmtree(scratch, ignore_errors=True)
    distill(replay, scratch, data=data, store=store, progress=False, resume=False)
    best = load_distilled(scratch / "last")
    best.extra, best.config = extra, config_asdict(dcfg)
    shutil.rmtree(distill_dir / "best", ignore_errors=True)
    save_distilled(best, distill_dir / "best")
    shutil.rmtree(scratch)


def _extra(folder: Path, iteration: int | None, accuracy) -> dict:
    """The meta a set saved at ``iteration`` carried: its evaluation from metrics.jsonl."""

    extra = {"iteration": iteration, "accuracy": accuracy, "std": None,
             **distributed.metadata()}  # as distill records it
    if (folder / "metrics.jsonl").is_file():
        for row, _ in _read_rows(folder / "metrics.jsonl"):
            if row.get("eval") and not row.get("ema") and row["iteration"] == iteration:
                extra.update(accuracy=row["mean"], std=row["std"])
    return extra


def restore_outputs(stage_config: Callable[[str | None], Any], out: Path,
                    get_data: Callable[[], Any], get_store: Callable[[], Any]) -> list[str]:
    """Rebuild an unreadable ``best/`` or ``last/`` of the finished distillation in
    ``out/distill``; ``stage_config(expert_dir)`` builds the run's distillation config
    (:func:`datadistill.tm.config.distill_config` of its pipeline config), ``get_data()`` gives
    the prepared data and ``get_store()`` the expert store a replay needs (each only called
    when needed). Returns what was rebuilt, in words (empty when both are intact)."""
    folder, done = out / "distill", []
    if _readable(folder / "last") and _readable(folder / "best"):
        return done
    dcfg, state = finished_state(stage_config, folder)
    data = get_data()
    if not _readable(folder / "last"):
        _save_state(state, data, dcfg, folder / "last",
                    _extra(folder, state.iteration, None))
        done.append("last/ from the checkpoint")
    if not _readable(folder / "best"):
        if state.best_iteration in (None, state.iteration):
            _save_state(state, data, dcfg, folder / "best",
                        _extra(folder, state.iteration, state.best_accuracy))
            done.append("best/ from the checkpoint")
        else:
            _replay_best(dcfg, data, folder, _extra(folder, state.best_iteration,
                                                    state.best_accuracy), get_store())
            done.append(f"best/ by replaying iterations 0-{state.best_iteration}")
    for what in done:
        log.warning("%s was damaged or missing: rebuilt %s", out, what)
    return done
