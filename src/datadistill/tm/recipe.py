"""Trajectory matching as a recipe: how ``run`` and ``validate`` load, run and summarise it.

Registers the :class:`~datadistill.recipes.Recipe` ``tm``; its presets
(:data:`datadistill.tm.presets.PRESETS`) register themselves as the methods the report
describes, the shipped ones when :mod:`datadistill.tm.presets` is imported, the others with
:func:`datadistill.tm.presets.register_preset`.
"""

from __future__ import annotations

from pathlib import Path

from datadistill.checks import check_ipc_for_dataset
from datadistill.recipes import Recipe, register_recipe
from datadistill.runtime.progress import plural
from datadistill.tm.config import load_pipeline_config
from datadistill.tm.pipeline import run_pipeline


def _note(cfg) -> str | None:
    return check_ipc_for_dataset(cfg.ipc, cfg.dataset, cfg.data_root, cfg.train_per_class)


def run_lines(report: dict, out_dir: Path) -> list[str]:
    """What the CLI prints after a run: each evaluated set's accuracy, where the report is."""
    lines = [f"  {key:<24} {100 * rep['mean']:6.2f} ± {100 * rep['std']:.2f} % "
             f"({plural(len(rep['accuracies']), 'run')})"
             for key, rep in report.items() if isinstance(rep, dict) and "accuracies" in rep]
    lines.append(f"report written to {out_dir / 'eval.json'} "
                 f"({report['seconds']['total']:.0f} s)")
    return lines


RECIPE = register_recipe(Recipe(
    name="tm", summary="trajectory matching (presets mtt, ftd, datm, mdatm, pad)",
    load=load_pipeline_config, run=run_pipeline,
    label=lambda c: f"{c.method}, {c.dataset}, IPC {c.ipc}",
    default_out=lambda c: f"runs/{c.dataset}_{c.method}_ipc{c.ipc}", lines=run_lines,
    note=_note))
