"""INFER on ImageNet-1K: the augmentations, CutMix and the teachers read from checkpoints.

Official ``ufc_generation/ufc_imgnet.py`` (INFER, Zhang et al., ICLR 2025), as SRe2L's
"recover" step: on every iteration the batch ``x + u`` goes through
``RandomResizedCrop(224, scale=(0.08, 1))`` and ``RandomHorizontalFlip`` applied to the whole
batch tensor (ONE crop box and one flip draw per batch), then the roll jitter (<= 32 px).
The student protocol of the paper's ImageNet table ("INFER+Dyn ... dynamically generated soft
labels, as described in SRe2L") is SRe2L's validation: per-sample RandomResizedCrop(224,
0.08-1) + flip, CutMix (beta 1), KL at T = 20, AdamW 1e-3 / wd 0.01, cosine, 300 epochs,
online ResNet-18 teacher (research note infer-and-evaluation.md A.6 and B.1; not released by
INFER, so these are SRe2L's values).

The crop box follows torchvision's ``RandomResizedCrop.get_params`` (10 tries, then the
centre crop at the nearest allowed ratio); the crop is resized with bilinear interpolation
(``align_corners=False``). Every draw comes from a CPU ``torch.Generator``.

Example:
    >>> x = torch.zeros(4, 3, 32, 32)
    >>> batch_resized_crop_flip(x, torch.Generator().manual_seed(0)).shape
    torch.Size([4, 3, 32, 32])
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import scipy.special
import torch
import torch.nn.functional as F
from torch import nn

from datadistill.errors import ConfigError
from datadistill.models.imagenet_teachers import IMAGENET_TEACHERS, load_teacher_checkpoint

SCALE = (0.08, 1.0)
RATIO = (3 / 4, 4 / 3)


@dataclass(frozen=True)
class CropBox:
    """Top-left corner (top, left) and size (height, width) of a crop, in pixels."""

    top: int
    left: int
    height: int
    width: int


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * torch.rand((), generator=generator, dtype=torch.float64).item()


def _randint(high: int, generator: torch.Generator | None) -> int:
    """Uniform in [0, high)."""
    return int(torch.randint(0, high, (1,), generator=generator))


def resized_crop_box(height: int, width: int, generator: torch.Generator | None,
                     scale: tuple[float, float] = SCALE,
                     ratio: tuple[float, float] = RATIO) -> CropBox:
    """torchvision's RandomResizedCrop.get_params: area fraction ~ U(scale), log-aspect ~
    U(log ratio); 10 tries, then the centre crop clamped to the ratio range.

    Example:
        >>> b = resized_crop_box(224, 224, torch.Generator().manual_seed(0))
        >>> 0 < b.height <= 224 and 0 < b.width <= 224
        True
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * _uniform(scale[0], scale[1], generator)
        aspect = math.exp(_uniform(log_ratio[0], log_ratio[1], generator))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return CropBox(_randint(height - h + 1, generator), _randint(width - w + 1, generator),
                           h, w)
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return CropBox((height - h) // 2, (width - w) // 2, h, w)


def crop_resize(x: torch.Tensor, box: CropBox, size: tuple[int, int]) -> torch.Tensor:
    """x (N, C, H, W) cropped to `box` and resized to `size` (bilinear)."""
    crop = x[..., box.top:box.top + box.height, box.left:box.left + box.width]
    return F.interpolate(crop, size=size, mode="bilinear", align_corners=False)


def batch_resized_crop_flip(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """The recover-step augmentation: one crop box and one flip draw for the whole batch."""
    box = resized_crop_box(x.shape[-2], x.shape[-1], generator)
    x = crop_resize(x, box, tuple(x.shape[-2:]))
    flip = torch.rand((), generator=generator).item() < 0.5
    return x.flip(-1) if flip else x


def sample_resized_crop_flip(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """The student's augmentation: a crop box and a flip draw per sample (data-loader style)."""
    out = torch.empty_like(x)
    size = tuple(x.shape[-2:])
    for i in range(x.shape[0]):
        xi = crop_resize(x[i:i + 1], resized_crop_box(*size, generator), size)
        out[i:i + 1] = xi.flip(-1) if torch.rand((), generator=generator).item() < 0.5 else xi
    return out


@dataclass
class CutMix:
    """One CutMix draw (Yun et al. 2019, as SRe2L): a box of x[perm] pasted into x.

    ``apply`` pastes the box into images (B, C, H, W) and mixes logits (B, K) as
    ``lam z + (1 - lam) z[perm]`` with ``lam`` = the kept area fraction.
    """

    lam: float
    perm: torch.Tensor
    box: CropBox

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        perm = self.perm.to(x.device)
        if x.dim() == 2:
            return self.lam * x + (1.0 - self.lam) * x[perm]
        b = self.box
        out = x.clone()
        rows, cols = slice(b.top, b.top + b.height), slice(b.left, b.left + b.width)
        out[..., rows, cols] = x[perm][..., rows, cols]
        return out


def sample_cutmix(n: int, height: int, width: int, beta: float,
                  generator: torch.Generator | None) -> CutMix:
    """lam ~ Beta(beta, beta); a box of side sqrt(1 - lam) centred uniformly, clipped; lam is
    then the area outside the box, as SRe2L's ``rand_bbox``/``cutmix``.

    Example:
        >>> m = sample_cutmix(4, 8, 8, 1.0, torch.Generator().manual_seed(0))
        >>> 0.0 <= m.lam <= 1.0
        True
    """
    # lam by the inverse Beta CDF of one uniform from `generator`, as labels.sample_mixup
    lam = float(scipy.special.betaincinv(beta, beta, _uniform(0.0, 1.0, generator)))
    cut = math.sqrt(1.0 - lam)
    ch, cw = int(height * cut), int(width * cut)
    cy, cx = _randint(height, generator), _randint(width, generator)
    top, bottom = max(cy - ch // 2, 0), min(cy + ch // 2, height)
    left, right = max(cx - cw // 2, 0), min(cx + cw // 2, width)
    box = CropBox(top, left, bottom - top, right - left)
    kept = 1.0 - box.height * box.width / (height * width)
    return CutMix(kept, torch.randperm(n, generator=generator), box)


def check_checkpoints(checkpoints: dict[str, str], archs: list[str]) -> None:
    """Raise a ConfigError unless every teacher of `archs` is an ImageNet architecture with
    an existing checkpoint file (checked before hours of decoding, not after).

    Example:
        >>> check_checkpoints({}, ["resnet18_imagenet"])                    # doctest: +SKIP
        ConfigError: teachers.checkpoints needs one file per teacher ...
    """

    unknown = [a for a in archs if a not in IMAGENET_TEACHERS]
    absent = [a for a in archs if a not in checkpoints]
    if unknown or absent:
        raise ConfigError(
            f"teachers.checkpoints needs one file per teacher of {list(IMAGENET_TEACHERS)}; "
            f"{'unknown: ' + str(unknown) if unknown else ''}"
            f"{' no file for: ' + str(absent) if absent else ''}; set "
            "teachers.checkpoints.<arch>=<path to its torchvision state dict>")
    for arch in archs:
        if not Path(checkpoints[arch]).expanduser().is_file():
            raise ConfigError(f"teachers.checkpoints.{arch} = {checkpoints[arch]} does not exist; "
                              "save torchvision's IMAGENET1K_V1 state dict of that model there, "
                              f"or set teachers.checkpoints.{arch}=<its path>")


def load_checkpoint_teachers(checkpoints: dict[str, str], archs: list[str], num_classes: int,
                             device: str | torch.device = "cpu") -> list[nn.Module]:
    """The teachers `archs` (ImageNet architecture names), each from its checkpoint file.

    Example:
        >>> load_checkpoint_teachers({"resnet18_imagenet": "r18.pth"}, ["resnet18_imagenet"],
        ...                          1000)                                  # doctest: +SKIP
    """

    check_checkpoints(checkpoints, archs)
    return [load_teacher_checkpoint(a, checkpoints[a], num_classes, device) for a in archs]
