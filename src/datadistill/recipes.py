"""Recipes by registry: every config names the recipe that runs it (``recipe: tm``).

A recipe is a family of methods with its own config, run and report: ``tm`` (trajectory
matching: MTT, FTD, DATM, M-DATM and PAD as presets of one loop, :mod:`datadistill.tm`) and
``infer`` (INFER's compensators, :mod:`datadistill.infer`). Each describes itself with one
:class:`Recipe` object in its own ``recipe`` module, which registers it here
(:func:`register_recipe`) together with the methods it runs (:func:`register_method`).
This module knows the recipes only by module name (:data:`RECIPES`) and imports one when it
is first asked for, so the CLI starts without loading every recipe, and the report, which
asks :func:`describe_method`, never imports a recipe.

``datadistill run CONFIG`` and ``datadistill validate CONFIG`` look the recipe up here;
nothing guesses it from file names or keys. A config file without ``recipe`` is read as
``tm`` (:data:`datadistill.config.DEFAULT_RECIPE`), the recipe of every config written before
recipes were named; when such a file fails to load, the error says so and names the choices.

Example:
    >>> recipe, cfg = load_config("digits/infer_ipc10")
    >>> recipe.name, recipe.label(cfg)
    ('infer', 'infer, digits, IPC 10')
    >>> sorted(RECIPES)
    ['infer', 'tm']
    >>> describe_method("datm").paper.startswith("Guo et al.")
    True
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datadistill.config import DEFAULT_CONFIG, read_config
from datadistill.errors import ConfigError

# recipe name -> the module that defines and registers it
RECIPES: dict[str, str] = {"tm": "datadistill.tm.recipe", "infer": "datadistill.infer.recipe"}
# The entry-point group of installed plugins (a method or recipe packaged apart): each entry
# names a module that registers what it adds when imported (e.g. with register_preset).
PLUGIN_GROUP = "datadistill.plugins"


@dataclass(frozen=True)
class Method:
    """One method as the report describes it: its paper, what it changes vs MTT, and where
    our defaults differ from the official code, and why."""

    name: str
    paper: str
    changes: str  # one line: what differs from MTT
    deviations: tuple[str, ...] = ()


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


_REGISTERED: dict[str, Recipe] = {}
_METHODS: dict[str, Method] = {}


def register_recipe(recipe: Recipe) -> Recipe:
    """Make ``recipe`` what :func:`get_recipe` answers for its name; returns it."""
    _REGISTERED[recipe.name] = recipe
    return recipe


def register_method(method: Method) -> Method:
    """Make ``method`` what :func:`describe_method` answers for its name; returns it."""
    _METHODS[method.name] = method
    return method


def unregister_method(name: str) -> None:
    """Forget method ``name`` (no error if it is not registered)."""
    _METHODS.pop(name, None)


def load_plugins() -> list[str]:
    """Import every installed plugin (entry points of :data:`PLUGIN_GROUP`), so the methods and
    recipes they register exist in this process; returns their names. A plugin that fails to
    import is a ConfigError naming it."""
    from importlib.metadata import entry_points

    loaded = []
    for ep in entry_points(group=PLUGIN_GROUP):
        try:
            ep.load()
        except Exception as err:  # noqa: BLE001  any failure of foreign code, named
            raise ConfigError(f"the datadistill plugin '{ep.name}' ({ep.value}) failed to load: "
                              f"{type(err).__name__}: {err}; fix or uninstall it") from None
        loaded.append(ep.name)
    return loaded


def load_recipes() -> None:
    """Import every recipe's module, so each has registered itself and its methods."""
    for module in RECIPES.values():
        importlib.import_module(module)


def describe_method(name: str) -> Method | None:
    """The paper, changes and deviations of method ``name``; None for an unknown method."""
    if name not in _METHODS:
        load_recipes()
    return _METHODS.get(name)


def _choices() -> str:
    load_recipes()
    return "; ".join(f"{r.name}: {r.summary}" for r in _REGISTERED.values())


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``; ConfigError naming the choices otherwise."""
    if name not in _REGISTERED and name in RECIPES:
        importlib.import_module(RECIPES[name])
    try:
        return _REGISTERED[name]
    except KeyError:
        raise ConfigError(f"unknown recipe '{name}'; set `recipe:` to one of: {_choices()}"
                          ) from None


def load_config(name_or_path: str | Path | None = None, overrides: list[str] | None = None
                ) -> tuple[Recipe, Any]:
    """The recipe a config names, and the config validated by that recipe's loader.

    ``None`` is the default config (``digits/mtt_ipc1``, the main job).
    """
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
