"""Recipes by registry: every config names the recipe that runs it (``recipe: tm``).

A recipe is a family of methods with its own config, run and report: ``tm`` (trajectory
matching: MTT, FTD, DATM, M-DATM and PAD as presets of one loop, :mod:`datadistill.pipeline`)
and ``infer`` (INFER's compensators, :mod:`datadistill.infer`). ``datadistill run CONFIG``
and ``datadistill validate CONFIG`` look the recipe up here; nothing guesses it from file
names or keys. A new method family adds one :class:`Recipe` line to :data:`RECIPES` (see the
README, "Adding a method").

A config file without ``recipe`` is read as ``tm`` (:data:`datadistill.config.DEFAULT_RECIPE`),
the recipe of every config written before recipes were named; when such a file fails to
load, the error says so and names the choices.

Example:
    >>> recipe, cfg = load_config("digits/infer_ipc10")
    >>> recipe.name, recipe.label(cfg)
    ('infer', 'infer, digits, IPC 10')
    >>> sorted(RECIPES)
    ['infer', 'tm']
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datadistill.config import read_config
from datadistill.errors import ConfigError
from datadistill.progress import plural


@dataclass(frozen=True)
class Recipe:
    """How one family of methods is configured, run and summarised."""

    name: str
    summary: str  # one line for listings and errors
    load: Callable[[Any, list[str]], Any]  # (name or path, overrides) -> validated config
    # (config, out_dir, progress=bool, restart=bool[, expert_dir= for tm]) -> result
    run: Callable[..., Any]
    label: Callable[[Any], str]  # config -> "method, dataset, IPC n"
    default_out: Callable[[Any], str]  # config -> default output folder
    lines: Callable[[Any, Path], list[str]]  # (result, out_dir) -> what `run` prints
    note: Callable[[Any], str | None] = lambda cfg: None  # a warning `validate` prints


# ---------------------------------------------------------------- trajectory matching
def _tm_load(name_or_path, overrides: list[str]):
    from datadistill.pipeline import load_pipeline_config

    return load_pipeline_config(name_or_path, overrides)


def _tm_run(cfg, out_dir: Path, progress: bool = True, restart: bool = False,
            expert_dir: str | None = None) -> dict:
    from datadistill.pipeline import run_pipeline

    return run_pipeline(cfg, out_dir, progress=progress, restart=restart, expert_dir=expert_dir)


def _tm_note(cfg) -> str | None:
    from datadistill.checks import check_ipc_for_dataset

    return check_ipc_for_dataset(cfg.ipc, cfg.dataset, cfg.data_root, cfg.train_per_class)


def _tm_lines(report: dict, out_dir: Path) -> list[str]:
    lines = [f"  {key:<24} {100 * rep['mean']:6.2f} ± {100 * rep['std']:.2f} % "
             f"({plural(len(rep['accuracies']), 'run')})"
             for key, rep in report.items() if isinstance(rep, dict) and "accuracies" in rep]
    lines.append(f"report written to {out_dir / 'eval.json'} "
                 f"({report['seconds']['total']:.0f} s)")
    return lines


# ---------------------------------------------------------------- INFER
def _infer_load(name_or_path, overrides: list[str]):
    from datadistill.infer.config import load_infer_config

    return load_infer_config(name_or_path, overrides)


def _infer_run(cfg, out_dir: Path, progress: bool = True, restart: bool = False):
    """INFER keeps no checkpoint: every run starts over, so ``restart`` changes nothing."""
    from datadistill.infer import run_infer

    return run_infer(cfg, out_dir, progress=progress)


def infer_lines(result, out_dir: Path) -> list[str]:
    """What the CLI prints after an INFER run: student accuracy, storage, where the set is."""
    rep = result.report
    lines = [f"INFER student ({rep.protocol}), last epoch: {100 * rep.mean:.2f} ± "
             f"{100 * rep.std:.2f} % ({plural(len(rep.accuracies), 'run')}, {rep.model}, "
             f"{rep.protocol})"]
    if "best_mean" in rep.settings:
        lines.append(f"  best of periodic evaluations (as INFER reports): "
                     f"{100 * rep.settings['best_mean']:.2f} %")
    st = result.infer_set.storage()
    lines.append(f"  storage: {st.image_units} of {st.budget_units} image-units (IPC budget), "
                 f"{st.instances} training instances, label table {st.label_bytes} bytes")
    lines.append(f"set written to {result.path}")
    return lines


RECIPES: dict[str, Recipe] = {
    "tm": Recipe(
        name="tm", summary="trajectory matching (presets mtt, ftd, datm, mdatm, pad)",
        load=_tm_load, run=_tm_run, label=lambda c: f"{c.method}, {c.dataset}, IPC {c.ipc}",
        default_out=lambda c: f"runs/{c.dataset}_{c.method}_ipc{c.ipc}", lines=_tm_lines,
        note=_tm_note),
    "infer": Recipe(
        name="infer", summary="INFER: inter-class feature compensators (teachers first)",
        load=_infer_load, run=_infer_run, label=lambda c: f"infer, {c.dataset}, IPC {c.ipc}",
        default_out=lambda c: f"runs/{c.dataset}_infer_ipc{c.ipc}", lines=infer_lines),
}


def load_recipes() -> None:
    """Import every recipe's modules, so each has registered its method description
    (:func:`datadistill.presets.register_method`) before a report describes a run folder.
    The trajectory-matching presets live in :mod:`datadistill.presets` itself."""
    import datadistill.infer.recipe  # noqa: F401  registers INFER_METHOD


def _choices() -> str:
    return "; ".join(f"{r.name}: {r.summary}" for r in RECIPES.values())


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``; ConfigError naming the choices otherwise."""
    try:
        return RECIPES[name]
    except KeyError:
        raise ConfigError(f"unknown recipe '{name}'; set `recipe:` to one of: {_choices()}"
                          ) from None


def load_config(name_or_path: str | Path | None = None, overrides: list[str] | None = None
                ) -> tuple[Recipe, Any]:
    """The recipe a config names, and the config validated by that recipe's loader.

    ``None`` is the default config (``digits/mtt_ipc1``, the main job).
    """
    from datadistill.pipeline import DEFAULT_CONFIG

    name_or_path = name_or_path or DEFAULT_CONFIG
    raw = read_config(name_or_path, overrides)
    recipe = get_recipe(raw.recipe)
    try:
        return recipe, recipe.load(name_or_path, list(overrides or []))
    except ConfigError as err:
        if raw.named:
            raise
        raise ConfigError(f"{err} ({name_or_path} names no `recipe`, so it was read as "
                          f"'{recipe.name}'; choices: {_choices()})") from None
