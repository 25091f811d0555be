"""Config files: the shipped YAML (and the folders added methods bring), names, method
fragments with ``extends:``, and reading a file plus ``key=value`` overrides into a raw config.

A config is addressed by name (``digits/mtt_ipc1``, searched in the shipped folder first, then
in the folders registered with :func:`add_config_root`) or by path. A method's default values
live in ``_methods/<method>.yaml``; a fragment may ``extends:`` another, whose values lie
beneath its own.

Example:
    >>> "digits/mtt_ipc1" in list_configs()
    True
"""

from __future__ import annotations

import dataclasses
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from datadistill.config.sections import closest_key, merge, parse_overrides
from datadistill.errors import ConfigError

CONFIG_PACKAGE = "datadistill.configs"
RECIPE_KEY = "recipe"  # names the entry of datadistill.recipes.RECIPES that runs a config
DEFAULT_RECIPE = "tm"  # what a user file without a `recipe` key is read as
DEFAULT_CONFIG = "digits/mtt_ipc1"  # the main job: what `run` with no config runs
METHODS_DIR = "_methods"  # configs/_methods/<preset>.yaml: a preset's default values
EXTENDS_KEY = "extends"  # a method fragment's parent: `extends: datm` (its values lie beneath)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"config file {path} does not exist; `datadistill configs ls` lists shipped configs"
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a text file (not UTF-8); give a YAML config") from None
    except RecursionError:
        raise ConfigError(f"{path} nests its values too deeply to be a config; give a YAML "
                          "mapping of config keys") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys, not {type(data).__name__}")
    return data


def _config_root() -> Path:
    return Path(str(resources.files(CONFIG_PACKAGE)))


# Config folders that methods added from outside the package bring (add_config_root), laid
# out as the shipped one; searched after it, so a shipped name is never shadowed.
_ADDED_ROOTS: list[Path] = []


def add_config_root(path: str | Path) -> Path:
    """Search ``path`` for configs by name and method fragments (``_methods/<method>.yaml``)
    after the shipped ``configs/``: where a method added from outside the package keeps its
    files. Returns the absolute folder; a missing folder is a ConfigError."""
    root = Path(path).resolve()
    if not root.is_dir():
        raise ConfigError(f"config folder {path} does not exist; give the folder that holds "
                          f"the method's {METHODS_DIR}/ and <dataset>/ configs")
    if root not in _ADDED_ROOTS:
        _ADDED_ROOTS.append(root)
    return root


def remove_config_root(path: str | Path) -> None:
    """Stop searching a folder given to :func:`add_config_root` (no error if it was not)."""
    root = Path(path).resolve()
    if root in _ADDED_ROOTS:
        _ADDED_ROOTS.remove(root)


def config_roots() -> list[Path]:
    """The folders searched for configs and method fragments: the shipped one first."""
    return [_config_root(), *_ADDED_ROOTS]


def list_configs() -> list[str]:
    """Names of the configs, ``<dataset>/<method>_ipc<N>``: the shipped ones and those of
    the folders added with :func:`add_config_root`."""
    return sorted({str(p.relative_to(root).with_suffix("")) for root in config_roots()
                   for p in root.rglob("*.yaml")
                   if not p.parent.name.startswith("_")})  # _methods/, _evaluation/: settings


def extends_chain(name: str, entries: dict[str, dict], what: str) -> list[str]:
    """``name`` and every entry it ``extends:`` in ``entries``, parent first.

    The one reading of ``extends:`` (method fragments, DD-Ranking's evaluator presets): an
    unknown parent or a cycle is a ConfigError that names the entries (``what``: what they are).

    Example:
        >>> extends_chain("b", {"a": {}, "b": {"extends": "a"}}, "preset")
        ['a', 'b']
    """
    chain: list[str] = []
    while True:
        if name not in entries:
            where = f"{what} '{chain[-1]}': `{EXTENDS_KEY}: {name}` names no {what}"
            raise ConfigError(f"{where}; extend one of: {', '.join(sorted(entries))}")
        if name in chain:
            cycle = " -> ".join([*chain[chain.index(name):], name])
            raise ConfigError(f"{what}s extend each other in a cycle ({cycle}); remove "
                              f"`{EXTENDS_KEY}:` from one of them")
        chain.append(name)
        parent = entries[name].get(EXTENDS_KEY)
        if parent is None:
            return chain[::-1]
        name = str(parent)


def extended_values(name: str, entries: dict[str, dict], what: str) -> dict[str, Any]:
    """Entry ``name`` merged over every entry it ``extends:`` (the key itself left out).

    Example:
        >>> extended_values("b", {"a": {"s": {"x": 1, "y": 2}}, "b": {"extends": "a",
        ...                        "s": {"y": 5}}}, "preset")
        {'s': {'x': 1, 'y': 5}}
    """
    values: dict[str, Any] = {}
    for link in extends_chain(name, entries, what):
        values = merge(values, {k: v for k, v in entries[link].items() if k != EXTENDS_KEY})
    return values


def _fragments(root: Path | None) -> tuple[dict[str, Path], dict[str, dict]]:
    """Every method fragment by name: its file and its values. ``root`` None: the
    ``_methods/`` of every config root (a name the shipped folder has is taken from it)."""
    roots = [r / METHODS_DIR for r in config_roots()] if root is None else [Path(root)]
    paths: dict[str, Path] = {}
    for folder in roots:
        for p in sorted(folder.glob("*.yaml")):
            paths.setdefault(p.stem, p)
    return paths, {name: load_yaml(p) for name, p in paths.items()}


def fragment_chain(name: str, root: Path | None = None) -> list[Path]:
    """The method fragment ``<root>/<name>.yaml`` and every fragment it ``extends:``, parent first.

    ``root`` defaults to the ``_methods/`` folders of :func:`config_roots` (the shipped
    ``configs/_methods`` first), so an added method's fragment may extend a shipped one. A
    method without a fragment (MTT) has an empty chain; an unknown parent or a cycle is a
    ConfigError naming the fragments.

    Example:
        >>> [p.stem for p in fragment_chain("pad")]
        ['datm', 'pad']
    """
    paths, entries = _fragments(root)
    if name not in entries:
        return []
    return [paths[link] for link in extends_chain(name, entries, "method fragment")]


def method_values(name: str, root: Path | None = None) -> dict[str, Any]:
    """The default values of method ``name``: its fragment merged over the ones it extends
    ({} for a method without a fragment); ``root`` as in :func:`fragment_chain`.

    Example:
        >>> method_values("pad")["distill"]["label_mode"]  # from datm.yaml, through extends
        'soft'
    """
    _, entries = _fragments(root)
    return extended_values(name, entries, "method fragment") if name in entries else {}


def packaged_values(name: str) -> dict[str, Any]:
    """The shipped settings file ``configs/<name>.yaml`` (e.g. ``_evaluation/ddranking``)."""
    return load_yaml(_config_root() / f"{name}.yaml")


def resolved_config_text(name_or_path: str | Path) -> str:
    """A config with its method's values written in: what ``configs show`` prints and
    ``configs cp`` writes.

    A shipped per-setting file holds only what differs from its method fragment
    (``configs/_methods/<method>.yaml`` and the fragments it ``extends:``). This text is the
    file's leading comments, a line naming the fragments, then every value (fragments < file)
    as YAML, so a copy runs alone and resolves to the same config whatever later edits the
    shipped fragments get. A file whose method has no fragment is returned as it is.

    Example:
        >>> "label_mode: soft" in resolved_config_text("cifar10/pad_ipc10")
        True
    """
    path = resolve_config_path(name_or_path)
    values = load_yaml(path)
    chain = fragment_chain(str(values["method"])) if "method" in values else []
    if not chain:
        return path.read_text()
    merged = merge(method_values(str(values["method"])), values)
    ordered = {k: merged[k] for k in values} | {k: v for k, v in merged.items() if k not in values}
    header = _leading_comments(path.read_text())
    source = " < ".join(f"configs/{METHODS_DIR}/{p.name}" if p.parent.parent == _config_root()
                        else str(p) for p in chain)  # an added method's fragment: its path
    header.append(f"# Every value written in: {source} < this setting's own values.\n")
    return "".join(header) + yaml.safe_dump(ordered, sort_keys=False, width=100)


def _leading_comments(text: str) -> list[str]:
    lines = text.splitlines(keepends=True)
    end = next((i for i, line in enumerate(lines) if not line.startswith("#")), len(lines))
    return lines[:end]


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A path to an existing YAML file, or the config of that name (:func:`list_configs`)."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    for root in config_roots():  # the shipped configs, then the added folders
        named = root / f"{str(name_or_path).removesuffix('.yaml')}.yaml"
        if named.is_file():
            return named
    hint = closest_key(str(name_or_path), list_configs())
    raise ConfigError(
        f"no config file or shipped config named '{name_or_path}'.{hint}"
        " Run `datadistill configs ls` to list them."
    )


@dataclasses.dataclass
class RawConfig:
    """A YAML mapping with overrides applied, and the recipe it names (``recipe:`` removed)."""

    recipe: str  # the file's `recipe` value, or DEFAULT_RECIPE when it names none
    values: dict[str, Any]  # every other key
    named: bool  # whether the file (or an override) named the recipe


def read_config(name_or_path: str | Path, overrides: list[str] | None = None) -> RawConfig:
    """Read a shipped or user config and its ``key=value`` overrides; split off ``recipe``.

    A file without ``recipe`` is read as :data:`DEFAULT_RECIPE` (trajectory matching, the
    recipe of every config written before recipes were named).

    Example:
        >>> read_config("digits/infer_ipc10").recipe
        'infer'
    """
    raw = merge(load_yaml(resolve_config_path(name_or_path)), parse_overrides(overrides or []))
    named = RECIPE_KEY in raw
    recipe = raw.pop(RECIPE_KEY, DEFAULT_RECIPE)
    return RawConfig(recipe=str(recipe), values=raw, named=named)


def expect_recipe(raw: RawConfig, wanted: str, name_or_path: str | Path) -> dict[str, Any]:
    """``raw.values`` unless the config names another recipe than ``wanted`` (ConfigError).

    A file that names no recipe is accepted by every recipe's own command (`datadistill
    infer FILE` reads it as INFER); `run` and `validate` read it as DEFAULT_RECIPE.
    """
    if raw.named and raw.recipe != wanted:
        raise ConfigError(
            f"{name_or_path} is a '{raw.recipe}' config (recipe: {raw.recipe}), not "
            f"'{wanted}'; run it with `datadistill run {name_or_path}`"
        )
    return raw.values
