"""INFER's ImageNet-1K teachers: ResNet-18, MobileNetV2 and EfficientNet-B0, torchvision layout.

INFER (Zhang et al., ICLR 2025; official ``ufc_generation/ufc_imgnet.py``) takes M = 3
ImageNet-pretrained torchvision models: ``resnet18``, ``mobilenet_v2`` and ``efficientnet_b0``
(IMAGENET1K_V1 weights). The architectures are written here with torchvision's module
names, so a state dict saved from torchvision (``torch.save(model.state_dict(), path)``)
loads into them key for key; torchvision itself is not needed. The user supplies the weight
files: :func:`load_teacher_checkpoint` reads them with ``weights_only=True`` and names every
missing, unexpected or mis-shaped key.

Architectures (He et al. 2016; Sandler et al. 2018; Tan & Le 2019), as torchvision builds them:
- ``resnet18_imagenet``: 7x7/2 stem, 3x3/2 max-pool, BasicBlocks 64/128/256/512 x 2, ``fc``;
  11,689,512 parameters at 1000 classes.
- ``mobilenet_v2_imagenet``: inverted residuals (t, c, n, s) = (1,16,1,1) (6,24,2,2)
  (6,32,3,2) (6,64,4,2) (6,96,3,1) (6,160,3,2) (6,320,1,1), ReLU6, 1280-d head, dropout 0.2;
  3,504,872 parameters.
- ``efficientnet_b0_imagenet``: MBConv stages (e, k, s, in, out, n) = (1,3,1,32,16,1)
  (6,3,2,16,24,2) (6,5,2,24,40,2) (6,3,2,40,80,3) (6,5,1,80,112,3) (6,5,2,112,192,4)
  (6,3,1,192,320,1), squeeze-excitation with in/4 channels, SiLU, stochastic depth 0.2
  (linear in the block index), 1280-d head, dropout 0.2; 5,288,548 parameters.

Example:
    >>> net = create_imagenet_teacher("mobilenet_v2_imagenet", num_classes=10)
    >>> net(torch.zeros(1, 3, 32, 32)).shape
    torch.Size([1, 10])
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from datadistill.errors import CompatibilityError, ConfigError
from datadistill.io import load_tensors
from datadistill.models.registry import register_model

__all__ = ["IMAGENET_TEACHERS", "create_imagenet_teacher", "load_teacher_checkpoint"]


def _conv_norm_act(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1,
                   act: Callable[[], nn.Module] | None = None) -> nn.Sequential:
    """torchvision's Conv2dNormActivation: children 0 (conv, no bias), 1 (BN), 2 (activation)."""
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


# --------------------------------------------------------------------------- ResNet-18


class BasicBlock(nn.Module):
    """conv1-bn1-relu-conv2-bn2 plus the identity or ``downsample`` (1x1 conv + BN) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class ResNet18(nn.Module):
    """torchvision ``resnet18``: (N, 3, H, W) -> (N, num_classes)."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        widths, cin = (64, 128, 256, 512), 64
        for i, width in enumerate(widths):
            stride = 1 if i == 0 else 2
            blocks = nn.Sequential(BasicBlock(cin, width, stride), BasicBlock(width, width, 1))
            setattr(self, f"layer{i + 1}", blocks)
            cin = width
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (N, 64, H/4, W/4)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (N, 512, H/32, W/32)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _init(net: nn.Module, linear: str = "default") -> None:
    """torchvision's initialisation: Kaiming-normal (fan_out) convs, unit BN; the Linear
    layers as each architecture does it ("default" keeps PyTorch's, "normal" N(0, 0.01),
    "uniform" U(+-1/sqrt(out)))."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear != "default":
            if linear == "normal":
                nn.init.normal_(m.weight, 0, 0.01)
            else:
                bound = 1.0 / m.out_features**0.5
                nn.init.uniform_(m.weight, -bound, bound)
            nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------- MobileNetV2


class InvertedResidual(nn.Module):
    """``conv``: [1x1 expand] -> 3x3 depthwise (stride s) -> 1x1 project (conv, BN)."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = int(round(cin * expand))
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_conv_norm_act(cin, hidden, 1, act=lambda: nn.ReLU6(inplace=True)))
        layers += [
            _conv_norm_act(hidden, hidden, 3, stride, groups=hidden,
                           act=lambda: nn.ReLU6(inplace=True)),
            nn.Conv2d(hidden, cout, 1, 1, 0, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_res_connect = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """torchvision ``mobilenet_v2`` (width 1.0): ``features`` 0..18 and ``classifier``."""

    SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
               (6, 160, 3, 2), (6, 320, 1, 1))  # (expand t, channels c, blocks n, stride s)

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2) -> None:
        super().__init__()
        relu6 = lambda: nn.ReLU6(inplace=True)  # noqa: E731
        layers: list[nn.Module] = [_conv_norm_act(3, 32, 3, 2, act=relu6)]
        cin = 32
        for t, c, n, s in self.SETTING:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(_conv_norm_act(cin, 1280, 1, act=relu6))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(1280, num_classes))
        _init(self, linear="normal")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(self.features(x), 1)  # (N, 1280, 1, 1)
        return self.classifier(torch.flatten(x, 1))


# --------------------------------------------------------------------------- EfficientNet-B0


class SqueezeExcitation(nn.Module):
    """x * sigmoid(fc2(silu(fc1(avgpool(x))))) with 1x1 convs ``fc1``/``fc2`` (with bias)."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation = nn.SiLU(inplace=True)
        self.scale_activation = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.fc2(self.activation(self.fc1(self.avgpool(x))))  # (N, C, 1, 1)
        return x * self.scale_activation(scale)


def stochastic_depth(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """torchvision's StochasticDepth(p, "row"): drop whole samples in training, rescale."""
    if not training or p == 0.0:
        return x
    keep = torch.empty(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device).bernoulli_(1 - p)
    return x * keep.div_(1 - p)


class MBConv(nn.Module):
    """``block``: [1x1 expand] -> kxk depthwise -> SE -> 1x1 project; residual when shapes
    match, with stochastic depth on the residual branch."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int,
                 drop: float) -> None:
        super().__init__()
        hidden = cin * expand  # a multiple of 8 for every B0 stage: torchvision's rounding
        silu = lambda: nn.SiLU(inplace=True)  # noqa: E731
        layers: list[nn.Module] = []
        if hidden != cin:
            layers.append(_conv_norm_act(cin, hidden, 1, act=silu))
        layers += [
            _conv_norm_act(hidden, hidden, kernel, stride, groups=hidden, act=silu),
            SqueezeExcitation(hidden, max(1, cin // 4)),
            _conv_norm_act(hidden, cout, 1),
        ]
        self.block = nn.Sequential(*layers)
        self.use_res_connect = stride == 1 and cin == cout
        self.drop = drop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        if self.use_res_connect:
            out = stochastic_depth(out, self.drop, self.training) + x
        return out


class EfficientNetB0(nn.Module):
    """torchvision ``efficientnet_b0``: ``features`` 0..8 (stem, 7 stages, head), ``classifier``."""

    SETTING = ((1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2),
               (6, 3, 2, 40, 80, 3), (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4),
               (6, 3, 1, 192, 320, 1))  # (expand, kernel, stride, in, out, blocks)

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2,
                 stochastic_depth_prob: float = 0.2) -> None:
        super().__init__()
        silu = lambda: nn.SiLU(inplace=True)  # noqa: E731
        layers: list[nn.Module] = [_conv_norm_act(3, 32, 3, 2, act=silu)]
        total, block_id = sum(s[-1] for s in self.SETTING), 0
        for expand, kernel, stride, cin, cout, n in self.SETTING:
            stage = []
            for i in range(n):
                drop = stochastic_depth_prob * block_id / total
                stage.append(MBConv(cin if i == 0 else cout, cout, kernel,
                                    stride if i == 0 else 1, expand, drop))
                block_id += 1
            layers.append(nn.Sequential(*stage))
        layers.append(_conv_norm_act(320, 1280, 1, act=silu))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout, inplace=True),
                                        nn.Linear(1280, num_classes))
        _init(self, linear="uniform")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))  # (N, 1280, 1, 1)
        return self.classifier(torch.flatten(x, 1))


# --------------------------------------------------------------------------- registry, loading

IMAGENET_TEACHERS: dict[str, Callable[..., nn.Module]] = {
    "resnet18_imagenet": ResNet18,
    "mobilenet_v2_imagenet": MobileNetV2,
    "efficientnet_b0_imagenet": EfficientNetB0,
}


def create_imagenet_teacher(name: str, num_classes: int = 1000) -> nn.Module:
    """A freshly initialised ImageNet architecture on the CPU (RGB input, any size >= 32 px)."""
    if name not in IMAGENET_TEACHERS:
        raise ConfigError(f"unknown ImageNet teacher {name!r}; choose one of "
                          f"{', '.join(IMAGENET_TEACHERS)}")
    return IMAGENET_TEACHERS[name](num_classes)


def _state_dict_of(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint: a bare state dict, or one under "state_dict"/"model";
    a DataParallel "module." prefix is dropped."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CompatibilityError(f"{path} holds no state dict (name -> tensor); save "
                                 "model.state_dict() with torch.save")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def load_teacher_checkpoint(name: str, path: str | Path, num_classes: int = 1000,
                            device: str | torch.device = "cpu") -> nn.Module:
    """Build teacher `name` and load the user's checkpoint file into it (weights_only=True).

    Every key must match torchvision's name and shape: missing, unexpected or mis-shaped
    keys raise a CompatibilityError listing them. The model is returned in eval mode.

    Example:
        >>> net = load_teacher_checkpoint("resnet18_imagenet", "resnet18.pth")  # doctest: +SKIP
    """
    path = Path(path).expanduser()
    net = create_imagenet_teacher(name, num_classes)
    state = _state_dict_of(load_tensors(path), path)
    expected = net.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(f"{k} {tuple(state[k].shape)} (expected {tuple(expected[k].shape)})"
                    for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or shapes:
        parts = [f"{label} ({len(keys)}): {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"
                 for label, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                     ("shape mismatches", shapes)) if keys]
        raise CompatibilityError(f"{path} does not fit {name} ({num_classes} classes, "
                                 f"torchvision names): {'; '.join(parts)}. Give the "
                                 f"torchvision {name.removesuffix('_imagenet')} state dict")
    net.load_state_dict(state)
    return net.to(device).eval()


def _register(name: str) -> None:
    def build(in_channels: int, num_classes: int, image_size: tuple[int, int]) -> nn.Module:
        if in_channels != 3:
            raise ConfigError(f"{name} takes RGB images, got {in_channels} channels")
        return create_imagenet_teacher(name, num_classes)

    register_model(name, doc=f"torchvision's ImageNet {name.removesuffix('_imagenet')}")(build)


for _name in IMAGENET_TEACHERS:
    _register(_name)
