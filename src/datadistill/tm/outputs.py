"""The distillation loop's outputs: evaluations during the run, the distilled sets (``last/``,
``best/``, ``initial/``, ``ema_last/``), grids, the report refresh, checkpoints, the
progress line and the result.

Several processes: every rank evaluates and keeps the same best iteration (rank 0's row is
handed to all), and rank 0 alone writes files.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from datadistill import distributed
from datadistill.artifacts.distilled import DistilledSet, save_distilled
from datadistill.config import config_asdict
from datadistill.evaluation import (
    protocols as evaluation,  # module: evaluation.evaluate at call time
)
from datadistill.report.page import refresh_report
from datadistill.tm.checkpoint import DistillState, save_checkpoint
from datadistill.tm.config import DistillConfig, stage_seeds
from datadistill.tm.state import Loop, Run

logger = logging.getLogger(__name__)


@dataclass
class DistillResult:
    """Where the outputs are and how the run ended."""

    out_dir: Path
    best_dir: Path  # best/ (by mean evaluation accuracy; = last/ when eval_runs is 0)
    last_dir: Path
    metrics_path: Path
    checkpoint_path: Path
    best_accuracy: float | None  # mean over eval_runs, fraction in [0, 1]
    best_iteration: int | None
    final_syn_lr: float
    iterations_done: int
    seconds: float


def _distilled(run: Run, images: torch.Tensor, state: DistillState, extra: dict):

    return DistilledSet(images=images.detach().cpu(), labels=state.labels.detach().cpu(),
                        lr=float(state.syn_lr.detach()), info=run.data.info,
                        space=run.data.train.space,
                        ipc=run.cfg.ipc, method=run.cfg.method, zca=run.data.zca,
                        config=config_asdict(run.cfg),
                        extra={**extra, **distributed.metadata()})


def _evaluate_here(run: Run, images: torch.Tensor, state: DistillState, it: int) -> dict:
    cfg = run.cfg
    if cfg.eval_runs == 0:
        return {"iteration": it, "eval": True, "mean": None, "std": None, "accuracies": []}

    report = evaluation.evaluate(
                      images.detach(), state.labels.detach(), run.data.test, protocol="classic",
                      model=cfg.model, lr=float(state.syn_lr.detach()), num_runs=cfg.eval_runs,
                      epochs=cfg.eval_epochs, batch_size=cfg.eval_batch,
                      seed=stage_seeds(cfg.seed + it, 1)[0], device=cfg.device,
                      dsa_strategy=run.dsa_strategy or "none", model_kwargs=cfg.model_kwargs,
                      space=run.data.train.space)
    return {"iteration": it, "eval": True, "mean": report.mean, "std": report.std,
            "accuracies": list(report.accuracies)}


def _evaluate(run: Run, images: torch.Tensor, state: DistillState, it: int) -> dict:
    """The evaluation row; under several processes rank 0's row, so every rank keeps the
    same best iteration (each rank takes part, in case the protocol shares its runs)."""
    return distributed.broadcast_object(_evaluate_here(run, images, state, it))


def evaluate_and_save(run: Run, loop: Loop, it: int, log) -> float | None:
    """Evaluate (images and, with FTD's EMA, the EMA images); save last/, best/ and a grid."""
    from datadistill.artifacts.grids import save_class_grid

    state, ema = loop.state, loop.ema
    main = distributed.is_main()  # every rank evaluates and keeps the best; rank 0 writes
    row = _evaluate(run, state.images, state, it)
    log.write(row)
    ds = _distilled(run, state.images, state, {"iteration": it, "accuracy": row["mean"],
                                               "std": row["std"]})
    if main:
        save_distilled(ds, run.out / "last")
        save_class_grid(ds, run.out / "grids" / f"iter_{it:05d}.png")
    if it == 0 and main:  # the initial images, for the report's initial-vs-final grid
        save_distilled(ds, run.out / "initial")
    better = row["mean"] is None or state.best_accuracy is None or \
        row["mean"] > state.best_accuracy
    if better:
        if main:
            save_distilled(ds, run.out / "best")
        state.best_accuracy, state.best_iteration = row["mean"], it
    if ema is not None:
        ema_row = {**_evaluate(run, ema.images, state, it), "ema": True}
        log.write(ema_row)
        if main:
            save_distilled(_distilled(run, ema.images, state, {"iteration": it, "ema": True,
                                                               "accuracy": ema_row["mean"]}),
                           run.out / "ema_last")
    state.evaluated = it
    logger.info("iteration %d: accuracy %s", it, row["mean"])
    if main:
        refresh_report(run.out, force=it == run.cfg.iterations)  # report.html; never raises
    return row["mean"]


def write_checkpoint(run: Run, loop: Loop) -> None:
    """The state with the optimisers', generators' and EMA's states. Rank 0 writes; the
    others hold the same state in memory (a resume reads rank 0's)."""
    if not distributed.is_main():
        return
    state = loop.state
    state.optimizers = {k: o.state_dict() for k, o in loop.optimizers.items()}
    state.generators = {k: g.get_state() for k, g in loop.generators.items()}
    state.ema = loop.ema.state_dict() if loop.ema is not None else None
    save_checkpoint(run.out / "checkpoint.pt", state)


class NullLog:
    """The metrics log of a rank other than 0: same interface, writes nothing."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, row: dict) -> None:
        pass


def show(bar, row: dict | None, acc: float | None, state: DistillState) -> None:
    """The bar's postfix: the last step's loss and step size, the latest evaluation and the
    best one (the set kept in best/) with its iteration."""
    shown = {} if row is None else {"loss": f"{row['loss']:.4f}", "syn_lr": f"{row['syn_lr']:.3g}"}
    shown["acc"] = "-" if acc is None else f"{acc:.4f}"
    if state.best_accuracy is not None:
        shown["best"] = f"{state.best_accuracy:.4f}@{state.best_iteration}"
    bar.set_postfix(**shown)




def eval_points(cfg: DistillConfig) -> set[int]:
    """The iterations evaluated: 0, eval_every, ... and always the last one."""
    points = {cfg.iterations}
    if cfg.eval_every > 0:
        points |= set(range(0, cfg.iterations + 1, cfg.eval_every))
    return points
