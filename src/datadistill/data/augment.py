"""Differentiable Siamese Augmentation (DSA; Zhao & Bilen, ICML 2021), 'S' mode.

Each call draws ONE family uniformly from the strategy string (``color``, ``crop``, ``cutout``,
``flip``, ``scale``, ``rotate``) and applies it to the whole batch with per-sample parameters.
Every op is differentiable w.r.t. the images, so DSA runs inside the unrolled student of
trajectory matching. A draw is an :class:`AugDraw`: sampling and applying are separate, so the
same draw can be replayed on another batch of the same size (Siamese augmentation of real and
synthetic batches). All randomness comes from a CPU ``torch.Generator`` and is then moved to the
images' device, so results do not depend on the device.

The families (research notes trajectory-matching.md 1.3, infer-and-evaluation.md C.1):

- color: brightness ``x + b`` (b = u - 0.5), then saturation ``(x - mean_c) * s + mean_c``
  (s = 2u, mean over channels), then contrast ``(x - mean_chw) * c + mean_chw`` (c = u + 0.5);
- crop: integer translation in [-p, p], p = int(0.125 * H + 0.5), zero fill;
- cutout: zero a square of side int(0.5 * H + 0.5) at a random centre, clipped at the borders;
- flip: horizontal flip of each sample with probability 0.5;
- scale: sx, sy ~ U(1/1.2, 1.2) independently; rotate: angle ~ U(-15, 15) degrees; both warp
  with affine_grid / grid_sample (bilinear, zero padding, align_corners=True).

Example:
    >>> dsa = DSA()
    >>> g = torch.Generator().manual_seed(0)
    >>> draw = dsa.sample(8, (32, 32), generator=g)
    >>> real, syn = torch.randn(8, 3, 32, 32), torch.randn(8, 3, 32, 32)
    >>> real_aug, syn_aug = dsa.apply(real, draw), dsa.apply(syn, draw)   # same transform
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from datadistill.errors import CompatibilityError, ConfigError

FAMILIES = ("color", "crop", "cutout", "flip", "scale", "rotate")
DEFAULT_STRATEGY = "color_crop_cutout_flip_scale_rotate"


@dataclass(frozen=True)
class DSAParams:
    """Strengths of the DSA families (DC's ``ParamDiffAug`` defaults)."""

    prob_flip: float = 0.5  # probability of a horizontal flip per sample
    ratio_scale: float = 1.2  # sx, sy ~ U(1/ratio, ratio)
    ratio_rotate: float = 15.0  # angle ~ U(-ratio, ratio) degrees
    ratio_crop_pad: float = 0.125  # max translation as a fraction of the side
    ratio_cutout: float = 0.5  # cutout side as a fraction of the side
    brightness: float = 1.0  # additive shift (u - 0.5) * brightness
    saturation: float = 2.0  # saturation factor u * saturation
    contrast: float = 0.5  # contrast factor u + contrast

    def __post_init__(self) -> None:
        if not 0.0 <= self.prob_flip <= 1.0:
            raise ConfigError(f"prob_flip must be in [0, 1], got {self.prob_flip}")
        if self.ratio_scale < 1.0:
            raise ConfigError(f"ratio_scale must be >= 1 (range 1/r..r), got {self.ratio_scale}")
        if min(self.ratio_rotate, self.ratio_crop_pad, self.ratio_cutout) < 0:
            raise ConfigError("ratio_rotate, ratio_crop_pad and ratio_cutout must be >= 0")


@dataclass
class AugDraw:
    """One DSA draw: the chosen family and its per-sample parameters (CPU tensors of length n).

    Parameter names per family: color {brightness, saturation, contrast} (float); crop {dy, dx}
    (int64 shifts: output pixel (r, c) reads input (r + dy, c + dx)); cutout {cy, cx} (int64
    centres); flip {flip} (bool); scale {sx, sy} (float); rotate {angle} (float, degrees);
    none {} (identity).
    """

    family: str
    params: dict[str, torch.Tensor]

    def select(self, rows: slice) -> AugDraw:
        """The same draw restricted to the samples ``rows`` (a chunk of the batch).

        Every parameter is per sample, so applying the selection to ``x[rows]`` gives exactly
        ``apply(x, draw)[rows]``: a batch augmented once can be replayed chunk by chunk.

        Example:
            >>> draw = DSA("flip").sample(4, 8, generator=torch.Generator().manual_seed(0))
            >>> draw.select(slice(1, 3)).params["flip"].shape
            torch.Size([2])
        """
        return AugDraw(self.family, {k: v[rows] for k, v in self.params.items()})


def _parse_strategy(strategy: str | None) -> tuple[str, ...]:
    """'color_crop_flip' -> ('color', 'crop', 'flip'); '' / 'none' / None -> ()."""
    if strategy is None or strategy.strip().lower() in ("", "none"):
        return ()
    families = tuple(f for f in strategy.strip().lower().split("_") if f)
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise ConfigError(
            f"unknown DSA families {unknown} in strategy {strategy!r}; valid families are "
            f"{', '.join(FAMILIES)} joined by '_' (e.g. {DEFAULT_STRATEGY!r}), or 'none'"
        )
    return families


def _uniform(n: int, low: float, high: float, g: torch.Generator | None) -> torch.Tensor:
    """(n,) float32 samples of U(low, high) on the CPU."""
    return torch.rand(n, generator=g) * (high - low) + low


def _randint(n: int, low: int, high: int, g: torch.Generator | None) -> torch.Tensor:
    """(n,) int64 samples in [low, high] (inclusive) on the CPU."""
    return torch.randint(low, high + 1, (n,), generator=g)


def _half(side: int, ratio: float) -> int:
    """int(ratio * side + 0.5): DSA's round-half-up of crop pads and cutout sides."""
    return int(side * ratio + 0.5)


class DSA:
    """Differentiable Siamese Augmentation with one family per call ('S' mode).

    Example:
        >>> x = torch.randn(4, 3, 32, 32, requires_grad=True)
        >>> DSA()(x, generator=torch.Generator().manual_seed(1)).shape
        torch.Size([4, 3, 32, 32])
    """

    def __init__(
        self, strategy: str | None = DEFAULT_STRATEGY, params: DSAParams = DSAParams()
    ) -> None:
        self.strategy = strategy
        self.families = _parse_strategy(strategy)
        self.params = params

    def __repr__(self) -> str:
        return f"DSA(strategy={self.strategy!r}, params={self.params})"

    @property
    def is_identity(self) -> bool:
        """True when the strategy is empty ('' or 'none')."""
        return not self.families

    # ----------------------------------------------------------------------------- sampling
    def sample(
        self, n: int, image_size: tuple[int, int] | int, generator: torch.Generator | None = None
    ) -> AugDraw:
        """Draw a family and its parameters for a batch of ``n`` images of ``image_size``.

        ``generator`` must be a CPU generator; None uses the global torch RNG.
        """
        h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
        if not self.families:
            return AugDraw("none", {})
        pick = int(torch.randint(len(self.families), (1,), generator=generator))
        family = self.families[pick]
        return AugDraw(family, getattr(self, f"_sample_{family}")(n, h, w, generator))

    def _sample_color(self, n, h, w, g) -> dict[str, torch.Tensor]:
        p = self.params
        return {
            "brightness": (torch.rand(n, generator=g) - 0.5) * p.brightness,
            "saturation": torch.rand(n, generator=g) * p.saturation,
            "contrast": torch.rand(n, generator=g) + p.contrast,
        }

    def _sample_crop(self, n, h, w, g) -> dict[str, torch.Tensor]:
        ph, pw = _half(h, self.params.ratio_crop_pad), _half(w, self.params.ratio_crop_pad)
        return {"dy": _randint(n, -ph, ph, g), "dx": _randint(n, -pw, pw, g)}

    def _sample_cutout(self, n, h, w, g) -> dict[str, torch.Tensor]:
        sh, sw = _half(h, self.params.ratio_cutout), _half(w, self.params.ratio_cutout)
        # As DSA: centres in [0, side - (size % 2)], so even squares may hang off either border.
        return {"cy": _randint(n, 0, h - sh % 2, g), "cx": _randint(n, 0, w - sw % 2, g)}

    def _sample_flip(self, n, h, w, g) -> dict[str, torch.Tensor]:
        return {"flip": torch.rand(n, generator=g) < self.params.prob_flip}

    def _sample_scale(self, n, h, w, g) -> dict[str, torch.Tensor]:
        r = self.params.ratio_scale
        return {"sx": _uniform(n, 1.0 / r, r, g), "sy": _uniform(n, 1.0 / r, r, g)}

    def _sample_rotate(self, n, h, w, g) -> dict[str, torch.Tensor]:
        r = self.params.ratio_rotate
        return {"angle": _uniform(n, -r, r, g)}

    # ----------------------------------------------------------------------------- applying
    def apply(self, x: torch.Tensor, draw: AugDraw) -> torch.Tensor:
        """Apply ``draw`` to images (N, C, H, W); differentiable w.r.t. ``x``."""
        if draw.family == "none":
            return x
        if draw.family not in FAMILIES:
            raise ConfigError(f"unknown DSA family {draw.family!r}; valid: {', '.join(FAMILIES)}")
        for name, value in draw.params.items():
            if value.shape[0] != x.shape[0]:
                raise CompatibilityError(
                    f"DSA draw has {value.shape[0]} samples ({name}) but the batch has "
                    f"{x.shape[0]}; sample the draw with n = batch size"
                )
        return getattr(self, f"_apply_{draw.family}")(x, draw.params)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Sample a draw for ``x`` and apply it."""
        return self.apply(x, self.sample(x.shape[0], tuple(x.shape[-2:]), generator))

    @staticmethod
    def _per_sample(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(N,) parameter -> (N, 1, 1, 1) in x's dtype and device, for broadcasting."""
        return t.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)

    def _apply_color(self, x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
        x = x + self._per_sample(p["brightness"], x)
        mean_c = x.mean(dim=1, keepdim=True)  # (N, 1, H, W)
        x = (x - mean_c) * self._per_sample(p["saturation"], x) + mean_c
        mean_chw = x.mean(dim=(1, 2, 3), keepdim=True)  # (N, 1, 1, 1)
        return (x - mean_chw) * self._per_sample(p["contrast"], x) + mean_chw

    @staticmethod
    def _apply_crop(x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
        n, c, h, w = x.shape
        dev = x.device
        # One ring of zeros; out-of-range reads are clamped onto it, which gives the zero fill.
        xp = F.pad(x, (1, 1, 1, 1))  # (N, C, H+2, W+2)
        rows = (torch.arange(h, device=dev) + p["dy"].to(dev)[:, None]).clamp(-1, h) + 1  # (N, H)
        cols = (torch.arange(w, device=dev) + p["dx"].to(dev)[:, None]).clamp(-1, w) + 1  # (N, W)
        out = xp.gather(2, rows[:, None, :, None].expand(n, c, h, w + 2))  # (N, C, H, W+2)
        return out.gather(3, cols[:, None, None, :].expand(n, c, h, w))  # (N, C, H, W)

    def _apply_cutout(self, x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
        n, c, h, w = x.shape
        dev = x.device
        sh, sw = _half(h, self.params.ratio_cutout), _half(w, self.params.ratio_cutout)
        top = p["cy"].to(dev)[:, None] - sh // 2  # (N, 1)
        left = p["cx"].to(dev)[:, None] - sw // 2
        r, k = torch.arange(h, device=dev), torch.arange(w, device=dev)
        in_rows = (r >= top) & (r < top + sh)  # (N, H)
        in_cols = (k >= left) & (k < left + sw)  # (N, W)
        keep = ~(in_rows[:, :, None] & in_cols[:, None, :])  # (N, H, W)
        return x * keep[:, None].to(x.dtype)

    @staticmethod
    def _apply_flip(x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
        chosen = p["flip"].to(x.device).view(-1, 1, 1, 1)
        return torch.where(chosen, x.flip(3), x)

    @staticmethod
    def _warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """Resample x with per-sample affine maps theta (N, 2, 3) in normalised coordinates."""
        grid = F.affine_grid(
            theta.to(device=x.device, dtype=x.dtype), list(x.shape), align_corners=True
        )
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)

    def _apply_scale(self, x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
        sx, sy = p["sx"].double(), p["sy"].double()
        zero = torch.zeros_like(sx)
        theta = torch.stack([torch.stack([sx, zero, zero], 1), torch.stack([zero, sy, zero], 1)], 1)
        return self._warp(x, theta)  # theta (N, 2, 3)

    def _apply_rotate(self, x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
        rad = p["angle"].double() * (math.pi / 180.0)
        cos, sin, zero = rad.cos(), rad.sin(), torch.zeros_like(rad)
        theta = torch.stack(
            [torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1
        )
        return self._warp(x, theta)  # theta (N, 2, 3)
