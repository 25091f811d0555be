"""Model registry: ``create_model(name, ...)`` and ``list_models()``.

Every architecture registers a builder with :func:`register_model`. A builder takes
``(in_channels, num_classes, image_size, **kwargs)`` with explicit keyword arguments, so the
registry can list (and reject) keyword arguments by reading the builder's signature. Aliases
such as ``convnet_bn`` are the same builder with different default keyword arguments.

Factories never move a model to a device and never seed: weights are initialised from the
global torch RNG with PyTorch's default initialisers. Callers that need reproducible weights
wrap the call, e.g. ``with torch.random.fork_rng(): torch.manual_seed(s); create_model(...)``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from datadistill.errors import ConfigError

Builder = Callable[..., nn.Module]

# Arguments every builder receives positionally; the rest are the model's own kwargs.
_COMMON_ARGS = ("in_channels", "num_classes", "image_size")


@dataclass(frozen=True)
class ModelEntry:
    """One registry name: a builder plus the default kwargs that make it an alias."""

    name: str
    builder: Builder
    defaults: dict = field(default_factory=dict)
    doc: str = ""

    def valid_kwargs(self) -> tuple[str, ...]:
        """Keyword arguments the builder accepts beyond the common three."""
        params = inspect.signature(self.builder).parameters
        return tuple(p for p in params if p not in _COMMON_ARGS)


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, doc: str = "", **defaults) -> Callable[[Builder], Builder]:
    """Decorator that registers ``builder`` under ``name`` with alias ``defaults``.

    Example:
        >>> @register_model("tiny_mlp_demo", width=8)          # doctest: +SKIP
        ... def build(in_channels, num_classes, image_size, width=128): ...
    """

    def decorate(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ConfigError(f"model name {name!r} is registered twice; pick a unique name")
        entry = ModelEntry(name, builder, dict(defaults), doc or (builder.__doc__ or ""))
        unknown = set(defaults) - set(entry.valid_kwargs())
        if unknown:
            raise ConfigError(f"alias {name!r} sets unknown kwargs {sorted(unknown)}")
        _REGISTRY[name] = entry
        return builder

    return decorate


def list_models() -> list[str]:
    """Sorted registry names.

    Example:
        >>> "convnet" in list_models()
        True
    """
    return sorted(_REGISTRY)


def model_entry(name: str) -> ModelEntry:
    """The registry entry of ``name``; ConfigError listing the valid names otherwise."""
    key = name.lower()
    if key not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}; valid models are: {', '.join(list_models())}")
    return _REGISTRY[key]


def create_model(
    name: str,
    in_channels: int,
    num_classes: int,
    image_size: tuple[int, int] | int,
    **kwargs,
) -> nn.Module:
    """Build a freshly initialised model on the CPU (global RNG, never reseeded).

    Example:
        >>> net = create_model("convnet", 3, 10, (32, 32))
        >>> sum(p.numel() for p in net.parameters())
        320010
    """
    entry = model_entry(name)
    valid = entry.valid_kwargs()
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ConfigError(
            f"model {entry.name!r} got unknown kwargs {unknown}; "
            f"valid kwargs are: {', '.join(valid) or '(none)'}"
        )
    if int(in_channels) < 1 or int(num_classes) < 1:
        raise ConfigError(
            f"in_channels and num_classes must be positive, got {in_channels} and {num_classes}"
        )
    size = to_hw(image_size)
    return entry.builder(int(in_channels), int(num_classes), size, **{**entry.defaults, **kwargs})


def to_hw(image_size: tuple[int, int] | int) -> tuple[int, int]:
    """Normalise an int or (H, W) pair to a validated (H, W) tuple of positive ints."""
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    hw = tuple(int(s) for s in image_size)
    if len(hw) != 2 or min(hw) < 1:
        raise ConfigError(f"image_size must be an int or (H, W) of positive ints, got {image_size}")
    return hw  # type: ignore[return-value]


def check_choice(what: str, value: str, choices: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``choices``; ConfigError naming the valid ones otherwise."""
    if value not in choices:
        raise ConfigError(f"unknown {what} {value!r}; valid values are: {', '.join(choices)}")
    return value


def is_mnist_like(in_channels: int, image_size: tuple[int, int]) -> bool:
    """True for 1-channel 28x28 input, where the DC zoo pads the first conv to act as 32x32."""
    return in_channels == 1 and tuple(image_size) == (28, 28)


def too_small(model: str, image_size: tuple[int, int], why: str) -> ConfigError:
    """The error raised when an architecture cannot take images this small."""
    return ConfigError(
        f"{model} cannot take {image_size[0]}x{image_size[1]} images: {why}; "
        "use a model that can (e.g. 'convnet', 'alexnet', 'resnet18', 'mlp') or larger images"
    )
