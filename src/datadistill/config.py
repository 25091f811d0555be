"""Configuration machinery: typed dataclasses filled from YAML and ``key=value`` overrides.

Precedence, lowest to highest: dataclass defaults < preset < YAML file < command-line
overrides. Each recipe (experts, distill, infer) defines its own dataclass beside its code;
this module only knows how to fill any of them, so a key that the dataclass does not declare
is an error that suggests the closest declared key.

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class C:
    ...     lr: float = 0.01
    ...     steps: int = 10
    >>> config_from_dict(C, {"lr": "0.1", "steps": 3})
    C(lr=0.1, steps=3)
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml

from datadistill.errors import CompatibilityError, ConfigError

T = TypeVar("T")

CONFIG_PACKAGE = "datadistill.configs"
RECIPE_KEY = "recipe"  # names the entry of datadistill.recipes.RECIPES that runs a config
DEFAULT_RECIPE = "tm"  # what a user file without a `recipe` key is read as
DEFAULT_CONFIG = "digits/mtt_ipc1"  # the main job: what `run` with no config runs
METHODS_DIR = "_methods"  # configs/_methods/<preset>.yaml: a preset's default values
EXTENDS_KEY = "extends"  # a method fragment's parent: `extends: datm` (its values lie beneath)


@dataclasses.dataclass
class DataConfig:
    """The real data every stage reads, declared once: which dataset, where, in which space.

    Mixed (through :class:`RunContext`) into the pipeline config and into each stage config
    (``ExpertConfig``, ``DistillConfig``), so the keys stay where users write them (top level
    of a pipeline YAML: ``dataset: cifar10``, ``zca: true``; flat in a stage's saved config)
    and ``zca`` has one declaration, one default and one check (:func:`check_prepared
    <datadistill.data.check_prepared>`), copied into the stages by :func:`fields_of` alone.

    Example:
        >>> DataConfig(dataset="cifar10", zca=True).space
        'zca'
    """

    dataset: str = "cifar10"  # registry name (datadistill.data.list_datasets())
    data_root: str | None = None  # folder with the dataset files (None: default/not needed)
    zca: bool = False  # ZCA-whitened space (MTT: per setting); experts and distillation agree
    train_per_class: int | None = None  # class-balanced train subset (None: all; MTT: all)

    @property
    def space(self) -> str:
        """The image space of the prepared data: ``"zca"`` or ``"normalized"``."""
        return "zca" if self.zca else "normalized"


@dataclasses.dataclass
class RunContext(DataConfig):
    """What every stage of one trajectory-matching run shares: the data, the network, the
    seed and the device (a pipeline YAML's top-level keys besides ``method`` and ``ipc``)."""

    model: str = "convnet"  # registry name (datadistill.models.list_models())
    model_kwargs: dict = dataclasses.field(default_factory=dict)  # e.g. {depth: 4} (Tiny ImageNet)
    seed: int = 0  # every random draw of the stage derives from it
    device: str = "cpu"  # cpu | cuda | cuda:N


def check_saved_config(saved: dict[str, Any], now: dict[str, Any], where: str | Path, *,
                       what: str, fix: str, free: tuple[str, ...] = ()) -> None:
    """A stage resumes only under the config it was started with: every stage's one check.

    ``saved`` is the config recorded with the partial output (checkpoint, expert store,
    teacher), ``now`` the requested one; keys in ``free`` may change between calls (e.g. the
    iteration count). A key that ``now`` no longer has is ignored. The CompatibilityError lists
    every differing key as ``key: saved -> now`` and ends with ``fix``.

    Example:
        >>> check_saved_config({"lr": 0.1}, {"lr": 0.1}, "runs/x", what="config", fix="")
    """
    diff = sorted(k for k in now if k not in free and saved.get(k) != now[k])
    if diff:
        detail = ", ".join(f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in diff)
        raise CompatibilityError(f"{where} was written with another {what} ({detail}); {fix}")


def fields_of(cls: type, obj: Any) -> dict[str, Any]:
    """Copies of the values of dataclass ``cls``'s fields held by ``obj`` (which has them all).

    Example:
        >>> fields_of(DataConfig, RunContext(dataset="digits", seed=3))["dataset"]
        'digits'
    """
    return {f.name: copy.deepcopy(getattr(obj, f.name)) for f in dataclasses.fields(cls)}


def _closest(key: str, choices: list[str], prefix: str = "") -> str:
    """A did-you-mean naming the whole key, section included (``distill.iterations``)."""
    match = difflib.get_close_matches(key, choices, n=1, cutoff=0.5)
    return f" Did you mean '{prefix}{match[0]}'?" if match else ""


def _in_section(cls: type, hints: dict[str, Any], key: str, prefix: str) -> str:
    """A did-you-mean for a section's key given without its section (``iterations=5``)."""
    for f in dataclasses.fields(cls):
        section = hints[f.name]
        if dataclasses.is_dataclass(section) and any(g.name == key
                                                      for g in dataclasses.fields(section)):
            return f" Did you mean '{prefix}{f.name}.{key}'?"
    return ""


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Convert a YAML/CLI value to the declared field type, or raise ConfigError."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            value = [value]
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {annotation.__name__} fields")
        return config_from_dict(annotation, value, prefix=f"{where}.")
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if annotation in (int, float, str):
        if annotation is int and isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if annotation in (int, float) and isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            return annotation(value)
        except (TypeError, ValueError):
            kind = {int: "an integer", float: "a number", str: "a string"}[annotation]
            raise ConfigError(f"{where}: expected {kind}, got {value!r}") from None
    return value


def check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    """ConfigError naming ``key`` and the choices unless ``value`` is one of them.

    >>> check_choice("distill.window", "fixed", ("fixed", "expanding"))
    """
    if value not in choices:
        raise ConfigError(f"{key}={value!r}; choose one of {', '.join(choices)}")


def config_from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping; unknown keys and bad types are ConfigError."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(
                f"unknown config key '{prefix}{key}'."
                f"{_in_section(cls, hints, key, prefix) or _closest(key, names, prefix)} "
                f"Valid keys: {', '.join(names)}."
            )
        kwargs[key] = _coerce(value, hints[key], f"{prefix}{key}")
    try:
        cfg = cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{prefix or cls.__name__}: {err}") from None
    return cfg


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (tuples as lists) of a config dataclass, for YAML and JSON."""

    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Turn ``["a=1", "b.c=x"]`` into a nested dict; values are parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value (e.g. ipc=10)")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        except RecursionError:
            raise ConfigError(f"override {key}=... nests its value too deeply") from None
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; ``update`` wins."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


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
    hint = _closest(str(name_or_path), list_configs())
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
