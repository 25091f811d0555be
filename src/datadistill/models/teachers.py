"""Teacher networks of INFER: four CIFAR-style architectures, all with BatchNorm.

INFER (Zhang et al., "Breaking Class Barriers: Efficient Dataset Distillation via
Inter-Class Feature Compensator", ICLR 2025) optimises one compensator per teacher
architecture and labels its instances with the teachers' mean logits. On CIFAR it uses
M = 4 teachers (Sec. 4.1 of the paper; official ``ufc_generation/ufc_cifar.py``):

- ``resnet18_cifar``: ResNet-18 with a 3x3 stride-1 stem and no max-pool (the torchvision
  ResNet-18 as modified for 32 px inputs; also INFER's default student);
- ``mobilenetv2_cifar``: MobileNetV2 with a stride-1 stem and a stride-1 second stage;
- ``efficientnet_b0_cifar``: EfficientNet-B0 with a stride-1 3x3 stem, SE and swish;
- ``shufflenet_g2``: ShuffleNet v1 with 2 groups, out planes 200/400/800, blocks 4/8/4.

Every network ends in global average pooling, so one definition serves 1-channel 8x8 or
28x28 and 3-channel 32 or 64 px inputs (at 32 px it equals the fixed 4x4 pooling of the
reference CIFAR code). ``width_mult`` scales every channel count so tests and CPU runs
can use tiny teachers. The four names are also registered with ``create_model`` (as soon as
this module is imported), so they serve as students and in cross-architecture evaluation.

Example:
    >>> net = create_teacher("shufflenet_g2", 3, 10, 32, width_mult=0.25)
    >>> net(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from datadistill.errors import ConfigError
from datadistill.models.registry import register_model

__all__ = [
    "EfficientNetB0Cifar",
    "MobileNetV2Cifar",
    "ResNet18Cifar",
    "ShuffleNetV1",
    "create_teacher",
    "list_teachers",
]


def _scaled(channels: int, width_mult: float, divisor: int = 1) -> int:
    """``channels * width_mult`` rounded to a positive multiple of ``divisor``."""
    value = int(round(channels * width_mult / divisor)) * divisor
    return max(divisor, value)


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Conv (no bias, 'same' padding) followed by BatchNorm."""
    conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(cout))


# --------------------------------------------------------------------------- ResNet-18


class _BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity or 1x1 conv-BN shortcut (He et al. 2016)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv_bn(cin, cout, 3, stride), nn.ReLU(inplace=True), _conv_bn(cout, cout, 3)
        )
        keep = stride == 1 and cin == cout
        self.shortcut = nn.Identity() if keep else _conv_bn(cin, cout, 1, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


class ResNet18Cifar(nn.Module):
    """ResNet-18, stages 64/128/256/512 x 2 blocks, 3x3 stride-1 stem, no max-pool."""

    def __init__(self, in_channels: int, num_classes: int, width_mult: float = 1.0) -> None:
        super().__init__()
        widths = [_scaled(w, width_mult) for w in (64, 128, 256, 512)]
        self.stem = nn.Sequential(_conv_bn(in_channels, widths[0], 3), nn.ReLU(inplace=True))
        blocks, cin = [], widths[0]
        for i, cout in enumerate(widths):
            for j in range(2):
                blocks.append(_BasicBlock(cin, cout, 2 if (i > 0 and j == 0) else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, num_classes)
        # The official model is torchvision's ResNet-18 (every conv Kaiming-normal, fan_out)
        # whose conv1 is then replaced by a new 3x3 stride-1 conv: the stem keeps PyTorch's
        # default Conv2d init (uniform, bound 1/sqrt(fan_in)), the rest torchvision's.
        stem_conv = self.stem[0][0]
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and m is not stem_conv:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.stem(x))  # (N, 512w, H/8, W/8)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))


# --------------------------------------------------------------------------- MobileNetV2

# (expansion, out planes, blocks, stride); the second stage has stride 1 on CIFAR.
_MOBILENETV2_STAGES = (
    (1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2),
    (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
)  # fmt: skip


class _InvertedResidual(nn.Module):
    """1x1 expand, 3x3 depthwise, 1x1 linear project (Sandler et al. 2018).

    As in the CIFAR reference code, stride-1 blocks always add a shortcut (a 1x1 conv-BN when
    the width changes) and stride-2 blocks have none.
    """

    def __init__(self, cin: int, cout: int, expansion: int, stride: int) -> None:
        super().__init__()
        mid = expansion * cin
        self.body = nn.Sequential(
            _conv_bn(cin, mid, 1), nn.ReLU(inplace=True),
            _conv_bn(mid, mid, 3, stride, groups=mid), nn.ReLU(inplace=True),
            _conv_bn(mid, cout, 1),
        )  # fmt: skip
        self.stride = stride
        self.shortcut = None  # stride 2: no residual at all
        if stride == 1:
            self.shortcut = nn.Identity() if cin == cout else _conv_bn(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return out if self.shortcut is None else out + self.shortcut(x)


class MobileNetV2Cifar(nn.Module):
    """MobileNetV2 for small images: stride-1 stem and second stage, 1280-wide head."""

    def __init__(self, in_channels: int, num_classes: int, width_mult: float = 1.0) -> None:
        super().__init__()
        cin = _scaled(32, width_mult)
        self.stem = nn.Sequential(_conv_bn(in_channels, cin, 3), nn.ReLU(inplace=True))
        blocks = []
        for expansion, planes, n, stride in _MOBILENETV2_STAGES:
            cout = _scaled(planes, width_mult)
            for j in range(n):
                blocks.append(_InvertedResidual(cin, cout, expansion, stride if j == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        head = _scaled(1280, width_mult)
        self.head = nn.Sequential(_conv_bn(cin, head, 1), nn.ReLU(inplace=True))
        self.fc = nn.Linear(head, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.head(self.blocks(self.stem(x)))  # (N, 1280w, H/8, W/8)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))


# --------------------------------------------------------------------------- EfficientNet-B0

# (expansion, out channels, blocks, kernel, stride) of EfficientNet-B0, CIFAR strides.
_EFFICIENTNET_B0_STAGES = (
    (1, 16, 1, 3, 1), (6, 24, 2, 3, 2), (6, 40, 2, 5, 2), (6, 80, 3, 3, 2),
    (6, 112, 3, 5, 1), (6, 192, 4, 5, 2), (6, 320, 1, 3, 1),
)  # fmt: skip


class _SqueezeExcite(nn.Module):
    """Channel gating: global pool, 1x1 reduce + swish, 1x1 expand + sigmoid."""

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.expand(F.silu(self.reduce(F.adaptive_avg_pool2d(x, 1))))
        return x * gate.sigmoid()


class _MBConv(nn.Module):
    """Expansion (skipped when the ratio is 1), depthwise conv, SE (ratio 0.25 of the block
    input), linear projection; identity skip when shape is kept."""

    def __init__(self, cin: int, cout: int, expansion: int, kernel: int, stride: int) -> None:
        super().__init__()
        mid = expansion * cin
        layers: list[nn.Module] = []
        if expansion != 1:
            layers += [_conv_bn(cin, mid, 1), nn.SiLU(inplace=True)]
        layers += [_conv_bn(mid, mid, kernel, stride, groups=mid), nn.SiLU(inplace=True)]
        layers += [_SqueezeExcite(mid, max(1, int(cin * 0.25))), _conv_bn(mid, cout, 1)]
        self.body = nn.Sequential(*layers)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return out + x if self.skip else out


class EfficientNetB0Cifar(nn.Module):
    """EfficientNet-B0 with a stride-1 3x3 stem and dropout 0.2 before the classifier.

    The CIFAR reference code declares drop-connect 0.2, but its per-block rate is computed
    from a counter that never advances, so every block's rate is 0; we leave it out. Its
    unused BatchNorm in the first block (expansion 1) is also not built, which is why the
    official code has to pop that layer's hook from the BN loss.
    """

    def __init__(
        self, in_channels: int, num_classes: int, width_mult: float = 1.0, dropout: float = 0.2
    ) -> None:
        super().__init__()
        cin = _scaled(32, width_mult)
        self.stem = nn.Sequential(_conv_bn(in_channels, cin, 3), nn.SiLU(inplace=True))
        blocks = []
        for expansion, planes, n, kernel, stride in _EFFICIENTNET_B0_STAGES:
            cout = _scaled(planes, width_mult)
            for j in range(n):
                blocks.append(_MBConv(cin, cout, expansion, kernel, stride if j == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.stem(x))  # (N, 320w, H/16, W/16)
        return self.fc(self.dropout(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1)))


# --------------------------------------------------------------------------- ShuffleNet v1


def _channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(N, g*c, H, W) -> interleave the g groups' channels (Zhang et al. 2018, Fig. 1)."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class _ShuffleUnit(nn.Module):
    """Grouped 1x1, shuffle, 3x3 depthwise, grouped 1x1. Stride 2 concatenates an avg-pooled
    shortcut (so the body produces ``cout - cin`` channels); stride 1 adds the input."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int, first: bool) -> None:
        super().__init__()
        body_out = cout - cin if stride == 2 else cout
        mid = body_out // 4
        # The very first unit sees the narrow stem, so its first 1x1 conv is not grouped.
        self.g1 = 1 if first else groups
        self.reduce = nn.Sequential(_conv_bn(cin, mid, 1, groups=self.g1), nn.ReLU(inplace=True))
        self.depthwise = nn.Sequential(
            _conv_bn(mid, mid, 3, stride, groups=mid), nn.ReLU(inplace=True)
        )
        self.expand = _conv_bn(mid, body_out, 1, groups=groups)
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.expand(self.depthwise(_channel_shuffle(self.reduce(x), self.g1)))
        if self.stride == 2:
            return F.relu(torch.cat([out, F.avg_pool2d(x, 3, 2, 1)], 1))
        return F.relu(out + x)


class ShuffleNetV1(nn.Module):
    """ShuffleNet v1 ("ShuffleNetG2" of the INFER code): 1x1 stem of 24 channels, three
    stages that each halve the resolution."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        width_mult: float = 1.0,
        groups: int = 2,
        out_planes: tuple[int, ...] = (200, 400, 800),
        num_blocks: tuple[int, ...] = (4, 8, 4),
    ) -> None:
        super().__init__()
        # Multiples of 4*groups keep every grouped conv and the //4 bottleneck exact.
        div = 4 * groups
        cin = _scaled(24, width_mult, div)
        self.stem = nn.Sequential(_conv_bn(in_channels, cin, 1), nn.ReLU(inplace=True))
        units = []
        for planes, n in zip(out_planes, num_blocks, strict=True):
            cout = max(_scaled(planes, width_mult, div), cin + div)
            for j in range(n):
                units.append(_ShuffleUnit(cin, cout, 2 if j == 0 else 1, groups, not units))
                cin = cout
        self.units = nn.Sequential(*units)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.units(self.stem(x))  # (N, 800w, H/8, W/8)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))


# --------------------------------------------------------------------------- registry

_TEACHERS: dict[str, Callable[..., nn.Module]] = {
    "resnet18_cifar": ResNet18Cifar,
    "mobilenetv2_cifar": MobileNetV2Cifar,
    "efficientnet_b0_cifar": EfficientNetB0Cifar,
    "shufflenet_g2": ShuffleNetV1,
}


def list_teachers() -> list[str]:
    """Registry names, in INFER's teacher order (ResNet-18, MobileNetV2, EfficientNet-B0,
    ShuffleNet-G2).

    Example:
        >>> list_teachers()[0]
        'resnet18_cifar'
    """
    return list(_TEACHERS)


def create_teacher(
    name: str,
    in_channels: int,
    num_classes: int,
    image_size: int | tuple[int, int],
    width_mult: float = 1.0,
) -> nn.Module:
    """Build a freshly initialised teacher on the CPU (never moved, never seeded).

    ``image_size`` is checked, not needed: every teacher pools globally. Inputs must be at
    least 8x8 (ResNet-18 and ShuffleNet reduce by 8, MobileNetV2 by 8, EfficientNet by 16
    with 'same' padding, which still works on 8 px).

    Example:
        >>> net = create_teacher("resnet18_cifar", 1, 10, 8, width_mult=0.125)
        >>> net(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """
    if name not in _TEACHERS:
        raise ConfigError(f"unknown teacher '{name}'; choose one of {', '.join(_TEACHERS)}")
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if min(size) < 8:
        raise ConfigError(f"teacher '{name}' needs images of at least 8x8 pixels, got {size}")
    if width_mult <= 0:
        raise ConfigError(f"width_mult must be positive, got {width_mult}")
    return _TEACHERS[name](in_channels, num_classes, width_mult=width_mult)


def _register(name: str) -> None:
    def build(
        in_channels: int, num_classes: int, image_size: tuple[int, int], width_mult: float = 1.0
    ) -> nn.Module:
        return create_teacher(name, in_channels, num_classes, image_size, width_mult)

    register_model(name, doc=f"INFER teacher {name} (BatchNorm, CIFAR-style)")(build)


for _name in _TEACHERS:
    _register(_name)
