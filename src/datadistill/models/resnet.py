"""ResNet-18 of the DC model zoo (CIFAR-style stem: one 3x3 conv, no max-pool).

Three variants:

- ``resnet18``: instance norm (GroupNorm(C, C)), strided 3x3 convs for downsampling;
- ``resnet18_bn``: the same with BatchNorm;
- ``resnet18_ap``: downsampling by a stride-1 conv followed by 2x2 average pooling (DC's
  ResNet18_AP; ``norm="batchnorm"`` gives ResNet18BN_AP). As in DC, the last feature map is
  flattened, not pooled, so its classifier input is 512*h*w (4x4 at 32 px, 3x3 at 28 px).

Instance-norm variants refuse inputs whose last stage is 1x1 (e.g. the 8x8 digits): instance
norm of a single value is constant, so the logits would not depend on the image. The BatchNorm
variants take them.

Deviation from DC (documented): ``resnet18`` pools the last map globally. DC uses a fixed
``avg_pool2d(4)``, which is the same thing for 28 and 32 px input but breaks at 64 px and 8 px.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from datadistill.models.convnet import norm_layer
from datadistill.models.registry import check_choice, register_model, too_small

RESNET_NORMS = ("instancenorm", "batchnorm")
STAGES = ((64, 1), (128, 2), (256, 2), (512, 2))  # (planes, stride of the first block)


def _norm(norm: str, channels: int) -> nn.Module:
    # Spatial size only matters for layernorm, which ResNets here do not offer.
    return norm_layer(norm, channels, (1, 1))


class BasicBlock(nn.Module):
    """Two 3x3 conv/norm pairs with a residual connection.

    ``avgpool_down=True`` replaces a strided conv by conv(stride 1) + AvgPool2d(2, 2), in the main
    path and in the 1x1 shortcut.

    Example:
        >>> BasicBlock(64, 128, 2, "instancenorm")(torch.zeros(1, 64, 8, 8)).shape
        torch.Size([1, 128, 4, 4])
    """

    def __init__(
        self, in_planes: int, planes: int, stride: int, norm: str, avgpool_down: bool = False
    ) -> None:
        super().__init__()
        self.stride, self.avgpool_down = stride, avgpool_down
        conv_stride = 1 if avgpool_down else stride
        self.conv1 = nn.Conv2d(in_planes, planes, 3, conv_stride, 1, bias=False)
        self.norm1 = _norm(norm, planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.norm2 = _norm(norm, planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            down: list[nn.Module] = [nn.Conv2d(in_planes, planes, 1, conv_stride, bias=False)]
            if avgpool_down and stride != 1:
                down.append(nn.AvgPool2d(2, 2))
            self.shortcut = nn.Sequential(*down, _norm(norm, planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_planes, H, W) -> (N, planes, H/stride, W/stride)."""
        out = F.relu(self.norm1(self.conv1(x)))
        if self.avgpool_down and self.stride != 1:
            out = F.avg_pool2d(out, 2, 2)
        out = self.norm2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet with BasicBlocks, ``blocks`` per stage (2, 2, 2, 2 = ResNet-18).

    Example:
        >>> ResNet(3, 10, (32, 32))(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        image_size: tuple[int, int],
        norm: str = "instancenorm",
        avgpool_down: bool = False,
        blocks: tuple[int, ...] = (2, 2, 2, 2),
    ) -> None:
        super().__init__()
        check_choice("norm", norm, RESNET_NORMS)
        self.avgpool_down = avgpool_down
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.norm1 = _norm(norm, 64)
        in_planes, (h, w) = 64, image_size
        for i, ((planes, stride), n) in enumerate(zip(STAGES, blocks, strict=True), start=1):
            strides = [stride] + [1] * (n - 1)
            layer = [
                BasicBlock(p, planes, s, norm, avgpool_down)
                for p, s in zip([in_planes] + [planes] * (n - 1), strides, strict=True)
            ]
            setattr(self, f"layer{i}", nn.Sequential(*layer))
            in_planes = planes
            if stride == 2:
                # avg-pool floors (28 -> 14 -> 7 -> 3); a k3/p1/s2 conv rounds up (7 -> 4).
                h, w = (h // 2, w // 2) if avgpool_down else ((h + 1) // 2, (w + 1) // 2)
        if min(h, w) < 1:
            raise too_small("resnet18_ap", image_size, "three 2x2 average pools need >= 8 px")
        if norm == "instancenorm" and h * w == 1:
            # Instance norm of a 1x1 map outputs its bias: the logits would ignore the input.
            raise too_small(
                "resnet18 with instance norm",
                image_size,
                "its last stage runs at 1x1, where instance norm is constant; "
                "use norm='batchnorm' (resnet18_bn) or images of >= 16 px",
            )
        # AP variant flattens the last map (as DC); the strided one pools it globally.
        feat = in_planes * h * w if avgpool_down else in_planes
        self.fc = nn.Linear(feat, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, feat) embedding before the classifier."""
        out = F.relu(self.norm1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        if self.avgpool_down:
            return out.flatten(1)
        return out.mean(dim=(2, 3))  # global average pool -> (N, 512)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, num_classes)."""
        return self.fc(self.features(x))


def _resnet18(in_channels, num_classes, image_size, norm: str = "instancenorm") -> ResNet:
    """ResNet-18 with strided-conv downsampling."""
    return ResNet(in_channels, num_classes, image_size, norm, avgpool_down=False)


def _resnet18_ap(in_channels, num_classes, image_size, norm: str = "instancenorm") -> ResNet:
    """ResNet-18 with average-pooling downsampling (DC's ResNet18_AP)."""
    return ResNet(in_channels, num_classes, image_size, norm, avgpool_down=True)


register_model("resnet18")(_resnet18)
register_model("resnet18_bn", norm="batchnorm")(_resnet18)
register_model("resnet18_ap")(_resnet18_ap)
