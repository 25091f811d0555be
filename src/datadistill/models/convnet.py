"""ConvNet: the DC/DSA/DM/MTT benchmark backbone (ConvNet-3, ConvNetD4, ...).

Per block: Conv2d(k3, pad 1) -> norm -> activation -> 2x2 pooling; then a linear classifier
on the flattened feature map. ``instancenorm`` is GroupNorm(C, C, affine=True): per-sample,
per-channel statistics and no running buffers, which is what lets the trajectory-matching
student run functionally (research note trajectory-matching.md section 1.2).

Parameter order (experts store flat vectors in it, PAD masks by it):
``conv1.weight, conv1.bias, norm1.weight, norm1.bias, conv2.weight, ..., fc.weight, fc.bias``.

Speed note: on CPU, ``nn.GroupNorm(C, C)`` was measured faster than ``F.instance_norm``, a
hand-written mean/var version and ``F.layer_norm`` over (H, W) for both forward+backward and the
double backward of an unrolled step (see the models report), so it is used as is.
"""

from __future__ import annotations

import functools
import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

from datadistill.models.convnet_ops import norm_act_pool
from datadistill.models.registry import (
    check_choice,
    is_mnist_like,
    register_model,
    too_small,
)

logger = logging.getLogger(__name__)

NORMS = ("instancenorm", "batchnorm", "layernorm", "groupnorm", "none")
ACTS = ("relu", "leakyrelu", "sigmoid", "swish")
POOLS = ("avgpool", "maxpool", "none")
# On CPU an instance-norm ConvNet with ReLU runs each norm -> ReLU -> 2x2 average pool as one
# op (datadistill.models.convnet_kernels.norm_act_pool with native=True): the same values and
# first-order gradients as the three modules, bitwise, with fewer passes over the activations
# (no ReLU copy, no zero-filled pool gradient); its double backward is the hand-derived one.
# Set a model's ``fused`` attribute to False for the plain modules (CUDA always uses them).
FUSED_ON_CPU = True


def norm_layer(norm: str, channels: int, hw: tuple[int, int]) -> nn.Module:
    """The DC zoo's normalisation layers for a (channels, H, W) feature map.

    Example:
        >>> norm = norm_layer("instancenorm", 128, (32, 32))
        >>> type(norm).__name__, norm.num_groups, norm.num_channels
        ('GroupNorm', 128, 128)
    """
    check_choice("norm", norm, NORMS)
    if norm == "instancenorm":
        return nn.GroupNorm(channels, channels, affine=True)
    if norm == "batchnorm":
        return nn.BatchNorm2d(channels)
    if norm == "layernorm":
        # Normalises over (C, H, W) with elementwise affine weights of that shape (as DC).
        return nn.LayerNorm((channels, *hw), elementwise_affine=True)
    if norm == "groupnorm":
        return nn.GroupNorm(4, channels, affine=True)
    return nn.Identity()


def _layout(x: torch.Tensor) -> torch.memory_format:
    """channels_last for a tensor stored so (a channels_last model), else contiguous."""
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


@functools.cache
def _say_default_depth(image_size: tuple[int, int], depth: int) -> None:
    """Log once per size which depth ``convnet`` took (WARNING above 32 px, where it differs
    from the official ``ConvNet``'s depth 3)."""
    side = max(image_size)
    if side > 32:
        logger.warning("ConvNet at %dx%d px without a depth: using depth %d (a ~4x4 final map, "
                       "the official ConvNetD%d); the official `ConvNet` is depth 3 at every "
                       "size: set model_kwargs.depth=3 for it.", *image_size, depth, depth)
    else:
        logger.info("ConvNet at %dx%d px without a depth: using depth %d.", *image_size, depth)


def default_depth(image_size: tuple[int, int]) -> int:
    """Blocks that leave a ~4x4 final map: 3 at 28-32 px, 4 at 64, 5 at 128; 2 at 16, 1 at 8.

    This is our default, not the official one: the official ``ConvNet`` is depth 3 at every
    size, and its experiments at 64 and 128 px name ``ConvNetD4`` / ``ConvNetD5`` (aliases
    ``convnetd4`` / ``convnetd5`` here; the shipped configs set the depth explicitly). The
    rule picks what those experiments ran: every official choice (depth 3 at 32 px, D4 at 64,
    D5 at 128) ends on a 4x4 map. Below 32 px the same rule keeps instance norm away from 1x1
    or 2x2 maps, where it normalises 1-4 values per channel and the unrolled student's
    gradients become erratic (measured on the 8x8 digits: depth 3 sends the learned step size
    negative at once). A ConvNet built without a depth logs the depth it took.
    """
    side = max(image_size)
    if side <= 16:
        return max(1, int(math.log2(side)) - 2)
    return 3 if side <= 32 else 3 + math.ceil(math.log2(side / 32))


class ConvNet(nn.Module):
    """ConvNet-``depth`` with ``width`` channels per block.

    Example:
        >>> net = ConvNet(3, 10, (32, 32))
        >>> net(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        image_size: tuple[int, int],
        width: int = 128,
        depth: int | None = None,
        norm: str = "instancenorm",
        act: str = "relu",
        pool: str = "avgpool",
    ) -> None:
        super().__init__()
        check_choice("act", act, ACTS)
        check_choice("pool", pool, POOLS)
        check_choice("norm", norm, NORMS)
        if depth is None:
            depth = default_depth(image_size)
            _say_default_depth(tuple(image_size), depth)
        self.depth = int(depth)
        if self.depth < 1 or width < 1:
            raise too_small("ConvNet", image_size, f"depth {depth} / width {width} must be >= 1")
        self.act, self.pool = act, pool
        self.fused = FUSED_ON_CPU
        h, w = image_size
        channels = in_channels
        for d in range(1, self.depth + 1):
            # MNIST (1 x 28 x 28) is padded by 3 so it runs as 32 x 32, exactly as DC/MTT.
            pad = 3 if d == 1 and is_mnist_like(in_channels, image_size) else 1
            h, w = h + 2 * pad - 2, w + 2 * pad - 2
            # Registration order conv_d then norm_d fixes the flat-parameter order.
            setattr(self, f"conv{d}", nn.Conv2d(channels, width, 3, padding=pad))
            setattr(self, f"norm{d}", norm_layer(norm, width, (h, w)))
            channels = width
            if pool != "none":
                h, w = h // 2, w // 2
                if min(h, w) < 1:
                    raise too_small(
                        "ConvNet", image_size, f"depth {self.depth} pools the maps below 1x1"
                    )
        self.feature_shape = (channels, h, w)  # (C, H, W) before the classifier
        self.fc = nn.Linear(channels * h * w, num_classes)

    def _act(self, x: torch.Tensor) -> torch.Tensor:
        if self.act == "relu":
            return F.relu(x)
        if self.act == "leakyrelu":
            return F.leaky_relu(x, 0.01)
        if self.act == "sigmoid":
            return torch.sigmoid(x)
        return F.silu(x)

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool == "avgpool":
            return F.avg_pool2d(x, 2, 2)
        if self.pool == "maxpool":
            return F.max_pool2d(x, 2, 2)
        return x

    def _fusable(self, x: torch.Tensor) -> bool:
        """Whether norm -> ReLU -> pool runs as one fused op (:data:`FUSED_ON_CPU`)."""
        return (getattr(self, "fused", FUSED_ON_CPU) and x.device.type == "cpu"
                and self.act == "relu" and self.pool != "maxpool"
                and isinstance(self.norm1, nn.GroupNorm)
                and self.norm1.num_groups == self.norm1.num_channels and self.norm1.affine)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Flattened embedding before the classifier: (N, C, H, W) -> (N, C*h*w)."""
        fused = self._fusable(x)
        for d in range(1, self.depth + 1):
            x = getattr(self, f"conv{d}")(x)
            norm = getattr(self, f"norm{d}")
            if fused:
                fmt = _layout(x)
                x = norm_act_pool(x.contiguous(memory_format=fmt), norm.weight, norm.bias,
                                  norm.eps, self.pool == "avgpool", fmt, native=True)
                continue
            x = self._pool(self._act(norm(x)))
        return x.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> logits (N, num_classes)."""
        return self.fc(self.features(x))


# The class is the builder (the registry reads its signature); aliases only change defaults.
for _name, _defaults in {
    "convnet": {},
    "convnet_bn": {"norm": "batchnorm"},
    "convnetd4": {"depth": 4},
    "convnetd5": {"depth": 5},
}.items():
    register_model(_name, doc=f"ConvNet {_defaults or '(defaults)'}", **_defaults)(ConvNet)
