"""Typed config sections: dataclasses filled from mappings, checked, and written back.

:func:`config_from_dict` builds any dataclass from a mapping (types coerced, an unknown key an
error that names the closest declared one); nested sections whose keys files spell flat
(:func:`flat_section`) go through one alias table (:func:`key_aliases`) both ways. The keys
every stage shares (data, model, seed, device) are declared once (:class:`DataConfig`,
:class:`RunContext`), and a resumed stage checks its saved config with
:func:`check_saved_config`.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from datadistill.errors import CompatibilityError, ConfigError

T = TypeVar("T")



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


FLAT = "flat"  # field metadata: a nested section whose keys its parent's files spell flat


def flat_section(cls: type) -> Any:
    """A nested section (default ``cls()``) whose keys files spell flat (``distill.grad_mode``)."""
    return dataclasses.field(default_factory=cls, metadata={FLAT: True})


def flat_sections(cls: type) -> dict[str, type]:
    """Name -> class of each section of dataclass ``cls`` declared with :func:`flat_section`."""
    return {f.name: f.default_factory for f in dataclasses.fields(cls) if f.metadata.get(FLAT)}


@functools.cache
def key_aliases(cls: type) -> dict[str, str]:
    """The alias table of dataclass ``cls``: flat key -> nested path (``grad_mode`` ->
    ``grad.grad_mode``), derived from its :func:`flat_section` fields; the one table that
    :func:`config_from_dict` reads with and :func:`config_asdict` writes with."""
    return {sub.name: f"{name}.{sub.name}" for name, section in flat_sections(cls).items()
            for sub in dataclasses.fields(section)}


def config_of(cls: type[T], keys: dict[str, Any]) -> T:
    """Dataclass ``cls`` from keys spelt as files spell them (``grad_mode="adjoint"``), or with
    a :func:`flat_section` given whole (``grad=GradAxis(...)``); values as given, not coerced."""
    sections = flat_sections(cls)
    whole = {k: v for k, v in keys.items() if k in sections and isinstance(v, sections[k])}
    grouped = nest_keys(cls, {k: v for k, v in keys.items() if k not in whole})
    if both := sorted(set(whole) & set(grouped)):
        raise TypeError(f"{cls.__name__}: section {both[0]} given whole and by its keys")
    return cls(**whole, **{k: sections[k](**v) if k in sections else v
                           for k, v in grouped.items()})


def flat_fields(cls: type) -> list[tuple[str, dataclasses.Field]]:
    """(key, field) of every key of dataclass ``cls`` as files spell them, in order."""
    sections = flat_sections(cls)
    return [pair for f in dataclasses.fields(cls) for pair in
            (flat_fields(sections[f.name]) if f.name in sections else [(f.name, f)])]


def config_asdict(cfg: Any) -> Any:
    """``dataclasses.asdict(cfg)``, flat sections written flat in their parent: the layout of
    saved configs and checkpoints."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        out = {}
        for f in dataclasses.fields(cfg):
            value = config_asdict(getattr(cfg, f.name))
            out.update(value if f.metadata.get(FLAT) else {f.name: value})
        return out
    if isinstance(cfg, (list, tuple)):
        return type(cfg)(config_asdict(v) for v in cfg)
    if isinstance(cfg, dict):
        return type(cfg)((config_asdict(k), config_asdict(v)) for k, v in cfg.items())
    return copy.deepcopy(cfg)


def nest_keys(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """``data``, flat keys grouped: ``{"grad_mode": x}`` -> ``{"grad": {"grad_mode": x}}``."""
    aliases, out = key_aliases(cls), {}
    for key, value in data.items():
        if key in aliases:
            section, name = aliases[key].split(".")
            out.setdefault(section, {})[name] = value
        else:
            out[key] = value
    return out


def fields_of(cls: type, obj: Any) -> dict[str, Any]:
    """Copies of the values of dataclass ``cls``'s fields held by ``obj`` (which has them all).

    Example:
        >>> fields_of(DataConfig, RunContext(dataset="digits", seed=3))["dataset"]
        'digits'
    """
    return {f.name: copy.deepcopy(getattr(obj, f.name)) for f in dataclasses.fields(cls)}


def closest_key(key: str, choices: list[str], prefix: str = "") -> str:
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
    names = [name for name, _ in flat_fields(cls)]  # as files spell them
    sections = flat_sections(cls)
    kwargs = {}
    for key in data:
        if key not in names:
            raise ConfigError(
                f"unknown config key '{prefix}{key}'."
                f"{_in_section(cls, hints, key, prefix) or closest_key(key, names, prefix)} "
                f"Valid keys: {', '.join(names)}."
            )
    for key, value in nest_keys(cls, data).items():
        kwargs[key] = (config_from_dict(sections[key], value, prefix) if key in sections
                       else _coerce(value, hints[key], f"{prefix}{key}"))
    try:
        cfg = cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{prefix or cls.__name__}: {err}") from None
    return cfg


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (tuples as lists, :func:`config_asdict`'s layout) for YAML and JSON."""

    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(config_asdict(cfg))


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
