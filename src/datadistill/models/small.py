"""The small networks of the DC model zoo: LeNet, AlexNet, VGG-11 and a 3-layer MLP.

Used for cross-architecture evaluation (DC eval pool 'M': MLP, ConvNet, LeNet, AlexNet, VGG11,
ResNet18). The layouts follow the DC definitions; what differs is written down:

- the classifier's input size is computed from ``image_size`` instead of being hard-coded for
  32x32, so 64x64 input works too (DC would crash there);
- the "1-channel" first-layer padding of DC (LeNet 2, AlexNet 4, VGG 3) is applied to 1 x 28 x 28
  input only; other 1-channel sizes (e.g. the 8x8 digits) use the 3-channel padding;
- LeNet and VGG-11 cannot take 8x8 images (their maps shrink below 1x1): they raise ConfigError.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from datadistill.models.convnet import norm_layer
from datadistill.models.registry import check_choice, is_mnist_like, register_model, too_small

VGG11_CFG = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")
ZOO_NORMS = ("instancenorm", "batchnorm", "none")


class MLP(nn.Module):
    """Flatten -> Linear(C*H*W, width) -> ReLU -> Linear(width, width) -> ReLU -> Linear.

    Example:
        >>> MLP(3, 10, (32, 32))(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(self, in_channels, num_classes, image_size, width: int = 128) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_channels * image_size[0] * image_size[1], width)
        self.fc2 = nn.Linear(width, width)
        self.fc3 = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, num_classes)."""
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc3(F.relu(self.fc2(x)))


class LeNet(nn.Module):
    """conv5(6) -> ReLU -> max2 -> conv5(16) -> ReLU -> max2 -> 120 -> 84 -> classes.

    Example:
        >>> LeNet(1, 10, (28, 28))(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(self, in_channels, num_classes, image_size) -> None:
        super().__init__()
        pad = 2 if is_mnist_like(in_channels, image_size) else 0
        h, w = (((s + 2 * pad - 4) // 2 - 4) // 2 for s in image_size)
        if min(h, w) < 1:
            raise too_small("lenet", image_size, "two 5x5 convs and two 2x2 pools need >= 16 px")
        self.conv1 = nn.Conv2d(in_channels, 6, 5, padding=pad)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * h * w, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, num_classes)."""
        x = F.max_pool2d(F.relu(self.conv1(x)), 2, 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2, 2).flatten(1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class AlexNet(nn.Module):
    """DC's AlexNet: 5 convs (128, 192, 256, 192, 192), max-pools after conv 1, 2 and 5.

    ``norm="batchnorm"`` gives DC's AlexNetBN (a norm after every conv).

    Example:
        >>> AlexNet(3, 10, (32, 32))(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    # (out_channels, kernel, pool after this conv)
    LAYERS = ((128, 5, True), (192, 5, True), (256, 3, False), (192, 3, False), (192, 3, True))

    def __init__(self, in_channels, num_classes, image_size, norm: str = "none") -> None:
        super().__init__()
        check_choice("norm", norm, ZOO_NORMS)
        h, w = image_size
        channels = in_channels
        for i, (out, k, pool) in enumerate(self.LAYERS, start=1):
            pad = k // 2
            if i == 1 and is_mnist_like(in_channels, image_size):
                pad = 4  # 28 + 8 - 4 = 32: MNIST runs as 32x32, as in DC
            h, w = h + 2 * pad - k + 1, w + 2 * pad - k + 1
            setattr(self, f"conv{i}", nn.Conv2d(channels, out, k, padding=pad))
            setattr(self, f"norm{i}", norm_layer(norm, out, (h, w)))
            channels = out
            if pool:
                h, w = h // 2, w // 2
            if min(h, w) < 1:
                raise too_small("alexnet", image_size, "three 2x2 pools need >= 8 px")
        self.fc = nn.Linear(channels * h * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, num_classes)."""
        for i, (_, _, pool) in enumerate(self.LAYERS, start=1):
            x = F.relu(getattr(self, f"norm{i}")(getattr(self, f"conv{i}")(x)))
            if pool:
                x = F.max_pool2d(x, 2, 2)
        return self.fc(x.flatten(1))


class VGG(nn.Module):
    """VGG with 3x3 convs -> norm -> ReLU and 2x2 max-pools, then one linear layer.

    Example:
        >>> VGG(3, 10, (32, 32))(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self, in_channels, num_classes, image_size, cfg=VGG11_CFG, norm: str = "instancenorm"
    ) -> None:
        super().__init__()
        check_choice("norm", norm, ZOO_NORMS)
        layers: list[nn.Module] = []
        h, w = image_size
        channels = in_channels
        for item in cfg:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
                h, w = h // 2, w // 2
                if min(h, w) < 1:
                    raise too_small("vgg", image_size, "five 2x2 pools need >= 32 px")
                continue
            first = not layers
            pad = 3 if first and is_mnist_like(in_channels, image_size) else 1
            h, w = h + 2 * pad - 2, w + 2 * pad - 2
            layers += [nn.Conv2d(channels, item, 3, padding=pad), norm_layer(norm, item, (h, w))]
            layers.append(nn.ReLU())
            channels = item
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(channels * h * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, num_classes)."""
        return self.fc(self.features(x).flatten(1))


@register_model("mlp")
def _mlp(in_channels, num_classes, image_size, width: int = 128) -> MLP:
    """3-layer MLP with ``width`` hidden units."""
    return MLP(in_channels, num_classes, image_size, width)


@register_model("lenet")
def _lenet(in_channels, num_classes, image_size) -> LeNet:
    """LeNet-5 as in DC (ReLU, max-pooling)."""
    return LeNet(in_channels, num_classes, image_size)


@register_model("alexnet")
def _alexnet(in_channels, num_classes, image_size, norm: str = "none") -> AlexNet:
    """DC's AlexNet; norm='batchnorm' gives AlexNetBN."""
    return AlexNet(in_channels, num_classes, image_size, norm)


def _vgg11(in_channels, num_classes, image_size, norm: str = "instancenorm") -> VGG:
    """VGG-11 with instance norm (vgg11) or BatchNorm (vgg11_bn)."""
    return VGG(in_channels, num_classes, image_size, VGG11_CFG, norm)


register_model("vgg11")(_vgg11)
register_model("vgg11_bn", norm="batchnorm")(_vgg11)
