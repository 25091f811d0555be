"""Batched tensor versions of the torchvision train transforms INFER and its teachers use.

The official scripts apply ``RandomCrop(size, padding=4)`` and ``RandomHorizontalFlip()`` to
PIL images before ``Normalize``; here the same draws are made per sample on a normalised
batch. torchvision pads with black pixels, so the pad value is the normalised image of raw 0,
``-mean / std`` per channel, not 0. All draws come from a CPU ``torch.Generator`` so a run is
reproducible on any device.

Example:
    >>> x = torch.zeros(4, 3, 32, 32)
    >>> random_crop(x, 4, torch.zeros(3), torch.Generator().manual_seed(0)).shape
    torch.Size([4, 3, 32, 32])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def black_level(mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """(C,) normalised value of a black pixel, the fill torchvision's padding produces."""
    return -torch.tensor(mean, dtype=torch.float32) / torch.tensor(std, dtype=torch.float32)


def random_crop(
    x: torch.Tensor, padding: int, fill: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Pad every side by ``padding`` with ``fill`` (C,), then crop back at a random offset.

    x: (N, C, H, W). One offset in [0, 2 * padding] per sample and axis.
    """
    if padding <= 0:
        return x
    n, c, h, w = x.shape
    padded = F.pad(x, (padding,) * 4)  # (N, C, H + 2p, W + 2p), zeros for now
    border = torch.ones(1, 1, h, w, device=x.device, dtype=x.dtype)
    border = F.pad(border, (padding,) * 4) == 0  # (1, 1, H + 2p, W + 2p) True on the pad
    padded = torch.where(border, fill.to(x).view(1, c, 1, 1), padded)
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator).to(x.device)
    rows = offsets[:, :1] + torch.arange(h, device=x.device)  # (N, H)
    cols = offsets[:, 1:] + torch.arange(w, device=x.device)  # (N, W)
    batch = torch.arange(n, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (N, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


def random_flip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flip each image of x (N, C, H, W) horizontally with probability 0.5."""
    flip = torch.rand(x.shape[0], generator=generator).to(x.device) < 0.5  # (N,)
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def crop_flip(
    x: torch.Tensor,
    padding: int,
    fill: torch.Tensor,
    flip: bool,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """RandomCrop(padding) then, if ``flip``, RandomHorizontalFlip, as in the INFER scripts."""
    x = random_crop(x, padding, fill, generator)
    return random_flip(x, generator) if flip else x


def uses_flip(dsa_strategy: str, flip: bool | None) -> bool:
    """Resolve a ``flip: None`` setting from the dataset: digit-like datasets have no 'flip'
    in their DSA strategy, and mirrored digits are other digits."""
    return ("flip" in dsa_strategy) if flip is None else flip


def pixels_at(image_size: tuple[int, int], value: int | None, at_32: int = 4) -> int:
    """``value`` if set, else ``at_32`` px scaled from 32 px to the image size (at least 1).

    INFER's roll jitter and crop padding are 4 px at 32 px; 4 px on an 8 px digit would
    shift away half the image, so sizes scale unless a config fixes them.

    Example:
        >>> pixels_at((32, 32), None), pixels_at((8, 8), None), pixels_at((64, 64), None)
        (4, 1, 8)
    """
    if value is not None:
        return value
    return max(1, round(at_32 * min(image_size) / 32))
