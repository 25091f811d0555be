"""Fast flat-parameter forward of the ConvNet for the unrolled trajectory-matching student.

MTT (Cazenavette et al., CVPR 2022, Sec. 3, Eq. 2-3) unrolls N student steps
theta_{i+1} = theta_i - alpha * grad_theta CE(f(x_i; theta_i), y_i) and backpropagates the
matching loss through all of them, so every layer of the ConvNet is differentiated twice (the
inner gradient is built with ``create_graph=True``). PyTorch's generic double backward of
``GroupNorm`` is a long chain of broadcast ops on full-size tensors, and its convolution double
backward takes slow kernels. Here each ConvNet block runs the two ops of
:mod:`datadistill.models.convnet_ops`: a 3x3 convolution whose double backward is two native
convolution kernels, and the fused instance norm -> ReLU -> 2x2 average pool with a
hand-derived double backward.

The conv bias before an instance norm is dropped: the norm subtracts the per-(sample, channel)
mean, so the bias has no effect on the output and zero gradient (the student leaves those
entries of theta unchanged, exactly as the reference does up to rounding). On the CPU every
activation is kept channels_last, where convolution and pooling kernels are fastest.

Everything is checked against ``torch.autograd.gradgradcheck`` in float64 (tests) and against
the generic ``functional_forward`` when a plan is built (:func:`convnet_plan`).

Example:
    >>> net = create_model("convnet", 3, 10, 32, width=16)                # doctest: +SKIP
    >>> plan = convnet_plan(net)                                            # doctest: +SKIP
    >>> logits = plan.forward(flatten_params(net), torch.randn(2, 3, 32, 32))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from datadistill.models.convnet import ConvNet
from datadistill.models.convnet_ops import conv3x3, norm_act_pool

__all__ = ["ConvNetPlan", "conv3x3", "convnet_plan", "norm_act_pool"]

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class _Block:
    conv: int  # index of the conv weight in the parameter list
    bias: int  # index of the conv bias, -1 if none
    norm: tuple[int, int] | None  # indices of the norm weight and bias (instance norm)
    eps: float
    pad: int
    pool: bool


@dataclass(frozen=True)
class ConvNetPlan:
    """Where each ConvNet parameter lives in the flat vector, and how to run the blocks."""

    sizes: tuple[int, ...]  # parameter sizes in parameters() order
    shapes: tuple[tuple[int, ...], ...]
    blocks: tuple[_Block, ...]
    fc: tuple[int, int]  # indices of fc.weight, fc.bias
    channels_last: bool

    def forward(self, flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, K) of the ConvNet with parameters ``flat`` (P,) on images x (N, C, H, W)."""
        p = [v.view(s) for v, s in zip(flat.split(self.sizes), self.shapes, strict=True)]
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        x = x.contiguous(memory_format=fmt)
        for d, blk in enumerate(self.blocks):
            if blk.norm is not None:  # the conv bias cancels in the instance norm
                # the weight in the activations' layout once, not once per convolution call
                w = p[blk.conv].contiguous(memory_format=fmt)
                x = conv3x3(x, w, blk.pad, fmt, inner_dx=d > 0)
                x = norm_act_pool(x, p[blk.norm[0]], p[blk.norm[1]], blk.eps, blk.pool, fmt)
                continue
            x = F.conv2d(x, p[blk.conv], p[blk.bias] if blk.bias >= 0 else None, 1, blk.pad)
            x = F.relu(x)
            x = F.avg_pool2d(x, 2) if blk.pool else x
        return F.linear(x.flatten(1), p[self.fc[0]], p[self.fc[1]])  # (N, K)


def convnet_plan(model: nn.Module, *, channels_last: bool | None = None,
                 verify: bool = True) -> ConvNetPlan | None:
    """A :class:`ConvNetPlan` for a ``datadistill`` ConvNet with ReLU, avg/no pooling and
    instance or no norm; None for any other model (the caller falls back to the generic
    functional forward). With ``verify``, the plan's logits are compared once with ``model(x)``.
    """
    blocks = _blocks(model)
    if blocks is None:
        return None
    names = [n for n, _ in model.named_parameters()]
    shapes = tuple(tuple(p.shape) for p in model.parameters())
    fc = (names.index("fc.weight"), names.index("fc.bias"))
    device = next(model.parameters()).device
    if channels_last is None:
        channels_last = device.type == "cpu"
    plan = ConvNetPlan(tuple(p.numel() for p in model.parameters()), shapes, blocks, fc,
                       channels_last)
    if verify and not _verified(plan, model):
        logger.warning("fast ConvNet forward disagrees with the module; using the generic one")
        return None
    return plan


def _blocks(model: nn.Module) -> tuple[_Block, ...] | None:

    if not isinstance(model, ConvNet) or model.act != "relu" or model.pool == "maxpool":
        return None
    names = [n for n, _ in model.named_parameters()]
    blocks = []
    for d in range(1, model.depth + 1):
        conv, norm = getattr(model, f"conv{d}"), getattr(model, f"norm{d}")
        if conv.kernel_size != (3, 3) or conv.stride != (1, 1) or conv.groups != 1:
            return None
        instance = isinstance(norm, nn.GroupNorm) and norm.num_groups == norm.num_channels
        if not (instance and norm.affine) and not isinstance(norm, nn.Identity):
            return None
        bias = names.index(f"conv{d}.bias") if conv.bias is not None else -1
        blocks.append(_Block(
            conv=names.index(f"conv{d}.weight"), bias=bias,
            norm=(names.index(f"norm{d}.weight"), names.index(f"norm{d}.bias")) if instance
            else None,
            eps=float(norm.eps) if instance else 0.0, pad=int(conv.padding[0]),
            pool=model.pool == "avgpool"))
    return tuple(blocks)


def _verified(plan: ConvNetPlan, model: nn.Module) -> bool:
    """One forward on two random images, compared with the module (float64 copy, CPU)."""
    ref = _float64_copy(model)
    flat = torch.cat([p.detach().reshape(-1) for p in ref.parameters()])
    c = ref.conv1.in_channels
    size = _input_size(model)
    x = torch.randn(2, c, *size, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        expected = ref(x)
        got = plan.forward(flat, x)
    return bool(torch.allclose(got, expected, rtol=1e-6, atol=1e-8))


def _float64_copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model).to(device="cpu", dtype=torch.float64)


def _input_size(model: nn.Module) -> tuple[int, int]:
    """Image size that gives the model's feature shape (inverted from its layers)."""
    _, h, w = model.feature_shape
    for d in range(model.depth, 0, -1):
        pad = getattr(model, f"conv{d}").padding[0]
        if model.pool != "none":
            h, w = h * 2, w * 2
        h, w = h - 2 * pad + 2, w - 2 * pad + 2
    return h, w
