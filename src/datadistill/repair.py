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
distillation stage); ``datadistill repair OUT`` needs only the folder.

Example:
    >>> repair_run("runs/digits_mtt_ipc1")                                 # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from datadistill.errors import ArtifactError, DatadistillError
from datadistill.lock import lock_folder

log = logging.getLogger(__name__)


def _readable(folder: Path) -> bool:
    from datadistill.artifact import load_distilled

    try:
        load_distilled(folder)
        return True
    except DatadistillError:
        return False


def _finished_state(cfg, folder: Path):
    from datadistill.checkpoint import load_checkpoint
    from datadistill.pipeline import distill_config

    state = load_checkpoint(folder / "checkpoint.pt")
    cfg = dataclasses.replace(cfg, distill=dataclasses.replace(
        cfg.distill, expert_dir=state.config.get("expert_dir")))  # as the run recorded it
    dcfg = distill_config(cfg)
    if state.iteration != dcfg.iterations or state.evaluated != dcfg.iterations:
        raise ArtifactError(f"{folder} stopped at iteration {state.iteration} of "
                            f"{dcfg.iterations}; the run is not finished: rerun `datadistill "
                            "run` with the same config to resume it")
    return dcfg, state


def _save_state(state, data, dcfg, folder: Path, extra: dict) -> None:
    from datadistill.artifact import DistilledSet, save_distilled

    save_distilled(DistilledSet(images=state.images, labels=state.labels,
                                lr=float(state.syn_lr), info=data.info,
                                space=data.train.space, ipc=dcfg.ipc, method=dcfg.method,
                                zca=data.zca, config=dataclasses.asdict(dcfg), extra=extra),
                   folder)


def _replay_best(dcfg, data, distill_dir: Path, extra: dict, store) -> None:
    """Run the distillation again up to the best iteration and keep its images as best/."""
    from datadistill.artifact import load_distilled, save_distilled
    from datadistill.distill import distill

    replay = dataclasses.replace(dcfg, iterations=extra["iteration"], eval_runs=0, eval_every=0)
    scratch = distill_dir / ".replay"
    shutil.rmtree(scratch, ignore_errors=True)
    distill(replay, scratch, data=data, store=store, progress=False, resume=False)
    best = load_distilled(scratch / "last")
    best.extra, best.config = extra, dataclasses.asdict(dcfg)
    shutil.rmtree(distill_dir / "best", ignore_errors=True)
    save_distilled(best, distill_dir / "best")
    shutil.rmtree(scratch)


def _extra(folder: Path, iteration: int | None, accuracy) -> dict:
    """The meta a set saved at ``iteration`` carried: its evaluation from metrics.jsonl."""
    from datadistill import distributed
    from datadistill.checkpoint import _read_rows

    extra = {"iteration": iteration, "accuracy": accuracy, "std": None,
             **distributed.metadata()}  # as distill records it
    if (folder / "metrics.jsonl").is_file():
        for row, _ in _read_rows(folder / "metrics.jsonl"):
            if row.get("eval") and not row.get("ema") and row["iteration"] == iteration:
                extra.update(accuracy=row["mean"], std=row["std"])
    return extra


def restore_outputs(cfg, out: Path, get_data: Callable[[], Any], store=None) -> list[str]:
    """Rebuild an unreadable ``best/`` or ``last/`` of the finished distillation in
    ``out/distill``; ``get_data()`` gives the prepared data (only called when needed), and
    ``store`` the expert store a replay needs (default: the one the run recorded).
    Returns what was rebuilt, in words (empty when both are intact)."""
    folder, done = out / "distill", []
    if _readable(folder / "last") and _readable(folder / "best"):
        return done
    dcfg, state = _finished_state(cfg, folder)
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
            if store is None:
                from datadistill.experts import ExpertStore
                from datadistill.pipeline import find_recorded_store

                store = ExpertStore(find_recorded_store(dcfg.expert_dir, out))
            _replay_best(dcfg, data, folder, _extra(folder, state.best_iteration,
                                                    state.best_accuracy), store)
            done.append(f"best/ by replaying iterations 0-{state.best_iteration}")
    for what in done:
        log.warning("%s was damaged or missing: rebuilt %s", out, what)
    return done


def _set_aside_a_replaced_best(out: Path) -> list[str]:
    """A readable best/ that is not the set eval.json scored (replaced by hand) is renamed
    best.replaced-<n>/ (kept, never deleted), so it is rebuilt from the checkpoint."""
    from datadistill.pipeline import best_changed

    best = out / "distill" / "best"
    if not _readable(best) or best_changed(out, best) is None:
        return []
    n = 0
    while (aside := best.with_name(f"best.replaced-{n}")).exists():
        n += 1
    best.rename(aside)
    log.warning("%s is not the set eval.json scored; moved it to %s", best, aside)
    return [f"moved the replaced best/ to {aside.name}/"]


def repair_run(out_dir: str | Path, *, progress: bool = False,
               experts: str | Path | None = None) -> list[str]:
    """Restore ``best/``, ``last/`` and ``eval.json`` of the finished run in ``out_dir``.

    Works from any working directory and after the run folder was moved or copied: the expert
    store is the one the run recorded (:func:`~datadistill.pipeline.find_recorded_store`), or
    ``experts`` when given (the CLI's ``--experts``, for a store that was moved).

    Returns what was rebuilt, in words.
    """
    from datadistill.config import config_from_dict
    from datadistill.data import prepare
    from datadistill.experts import ExpertStore
    from datadistill.io import read_json
    from datadistill.pipeline import PipelineConfig, find_recorded_store, run_pipeline

    out = Path(out_dir)
    cfg = config_from_dict(PipelineConfig, read_json(out / "pipeline.json"))
    with lock_folder(out):
        dcfg, _ = _finished_state(cfg, out / "distill")  # unfinished: resumed, not repaired
        store_dir = find_recorded_store(dcfg.expert_dir, out, experts)
        moved = _set_aside_a_replaced_best(out)
        cfg = dataclasses.replace(cfg, distill=dataclasses.replace(cfg.distill, expert_dir=None))
        done = moved + restore_outputs(cfg, out, lambda: prepare(
            cfg.dataset, cfg.data_root, zca=cfg.zca, train_per_class=cfg.train_per_class),
            store=ExpertStore(store_dir))
        run_pipeline(cfg, out, progress=progress, expert_dir=store_dir)
    return [*done, "eval.json (finished evaluation networks reused)"]
