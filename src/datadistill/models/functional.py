"""Flat-parameter view of a model: the student of trajectory matching.

Expert trajectories are stored as flat vectors (P,) in ``model.parameters()`` order, and the
unrolled student of MTT updates one flat vector ``theta_{i+1} = theta_i - lr * grad``. This module
replaces MTT's ``ReparamModule`` by ``torch.func.functional_call``: the flat vector is split into
views with the parameters' shapes, so the forward is differentiable w.r.t. both the flat vector
and the input, including the create_graph double backward of the unrolled inner loop
(research note trajectory-matching.md section 1.5).

Buffers (BatchNorm running statistics) are taken from the module as they are; a BatchNorm model
in train mode updates them during ``functional_forward`` exactly as ``model(x)`` would.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from datadistill.errors import CompatibilityError


@dataclass(frozen=True)
class ParamSpec:
    """Names and shapes of a model's parameters in ``parameters()`` order.

    Example:
        >>> spec = param_spec(nn.Linear(3, 2))
        >>> spec.names, spec.shapes, spec.numel
        (('weight', 'bias'), ((2, 3), (2,)), 8)
    """

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    numel: int

    @property
    def sizes(self) -> tuple[int, ...]:
        """Number of elements of each parameter, in order."""
        return tuple(_prod(s) for s in self.shapes)

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split a flat (P,) vector into {name: view with the parameter's shape}."""
        self.check(flat)
        chunks = torch.split(flat, self.sizes)
        return {n: c.view(s) for n, c, s in zip(self.names, chunks, self.shapes, strict=True)}

    def check(self, flat: torch.Tensor) -> None:
        """Raise CompatibilityError unless ``flat`` is a (P,) vector of this spec."""
        if flat.dim() != 1 or flat.numel() != self.numel:
            raise CompatibilityError(
                f"flat parameter vector has shape {tuple(flat.shape)} but the model has "
                f"{self.numel} parameters; was it saved for another model, num_classes or "
                "image size? Build the model with the arguments recorded with the vector."
            )

    def to_dict(self) -> dict:
        """JSON-friendly form (for meta.json of expert stores)."""
        return {
            "names": list(self.names),
            "shapes": [list(s) for s in self.shapes],
            "numel": self.numel,
        }

    @classmethod
    def from_dict(cls, d: dict) -> ParamSpec:
        """Inverse of :meth:`to_dict`."""
        return cls(
            tuple(d["names"]), tuple(tuple(int(v) for v in s) for s in d["shapes"]), int(d["numel"])
        )


def _prod(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def param_spec(model: nn.Module) -> ParamSpec:
    """The :class:`ParamSpec` of ``model`` (``named_parameters()`` = ``parameters()`` order).

    Example:
        >>> param_spec(nn.Linear(3, 2)).numel
        8
    """
    named = list(model.named_parameters())
    shapes = tuple(tuple(p.shape) for _, p in named)
    return ParamSpec(tuple(n for n, _ in named), shapes, sum(p.numel() for _, p in named))


def flatten_params(model: nn.Module) -> torch.Tensor:
    """A detached copy of all parameters as one (P,) vector in ``parameters()`` order.

    Example:
        >>> flatten_params(nn.Linear(3, 2)).shape
        torch.Size([8])
    """
    params = [p.detach().reshape(-1) for p in model.parameters()]
    if not params:
        return torch.zeros(0)
    return torch.cat(params)  # cat allocates, so the result never aliases the module


def load_flat_params(model: nn.Module, flat: torch.Tensor) -> None:
    """Copy a (P,) vector into the module's parameters (in place, no autograd).

    Example:
        >>> net = nn.Linear(3, 2)
        >>> load_flat_params(net, torch.zeros(8))
        >>> float(net.bias.detach().abs().sum())
        0.0
    """
    spec = param_spec(model)
    spec.check(flat)
    with torch.no_grad():
        for p, chunk in zip(
            model.parameters(), torch.split(flat.detach(), spec.sizes), strict=True
        ):
            p.copy_(chunk.view_as(p))


def functional_forward(model: nn.Module, flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``model(x)`` evaluated with the parameters taken from the flat vector ``flat`` (P,).

    Differentiable w.r.t. ``flat`` and ``x``; supports ``create_graph=True`` double backward.

    Example:
        >>> net = nn.Linear(3, 2); theta = flatten_params(net).requires_grad_()
        >>> functional_forward(net, theta, torch.ones(4, 3)).shape
        torch.Size([4, 2])
    """
    params = param_spec(model).unflatten(flat)
    # Buffers not in the dict are read from the module itself.
    return functional_call(model, params, (x,))
