"""ZCA whitening as the MTT/FTD/DATM/PAD code does it (kornia's `ZCAWhitening`, eps=0.1).

Fitted on raw [0,1] pixels, with no mean/std step before it. With X the (N, D) flattened
training images (D = C*H*W), mu their mean, and the unbiased covariance

    Sigma = (X - mu)^T (X - mu) / (N - 1) = U diag(S) U^T,

the transform is T = U diag((S + eps)^-1/2) U^T and its inverse T_inv = U diag((S + eps)^1/2)
U^T. Whitening is x_w = (x - mu) T; the inverse is x = x_w T_inv + mu (kornia writes
(x_w + mu T) T_inv, the same thing). eps shrinks the small eigenvalues, so the whitened
training covariance is U diag(S / (S + eps)) U^T rather than exactly the identity.

The covariance is accumulated in float64 over chunks of images and decomposed with
`torch.linalg.eigh` (Sigma is symmetric PSD, so its eigenvectors are the SVD's). The stored
matrices are float32, like kornia's; `apply`/`invert` also work in chunks.

Example:
    >>> import torch
    >>> x = torch.rand(64, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    >>> zca = ZCA.fit(x)
    >>> bool(torch.allclose(zca.invert(zca.apply(x)), x, atol=1e-4))
    True
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from datadistill.errors import ArtifactError, CompatibilityError, ConfigError, DatasetError

DEFAULT_EPS = 0.1
CHUNK = 4096  # images per chunk: 4096 x 12288 float64 (Tiny) is 400 MB


@dataclass
class ZCA:
    """A fitted ZCA whitening transform.

    Attributes:
        eps: added to the covariance eigenvalues before the square roots.
        mean: (D,) float32 mean of the flattened training images.
        transform: (D, D) float32 T, applied on the right: x_w = (x - mean) @ T.
        inverse_transform: (D, D) float32 T_inv: x = x_w @ T_inv + mean.
    """

    eps: float
    mean: torch.Tensor
    transform: torch.Tensor
    inverse_transform: torch.Tensor
    # Copies of the tensors on other devices/dtypes, so a GPU loop does not move the
    # (D, D) matrices (600 MB for Tiny ImageNet) on every call.
    _moved: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def fit(cls, images: torch.Tensor, eps: float = DEFAULT_EPS, chunk: int = CHUNK) -> ZCA:
        """Fit on (N, C, H, W) raw [0,1] images; computed on `images.device` in float64.

        Example:
            >>> ZCA.fit(torch.rand(10, 3, 2, 2)).transform.shape
            torch.Size([12, 12])
        """
        if images.ndim != 4 or images.shape[0] < 2:
            raise DatasetError(
                f"ZCA needs at least 2 images (N, C, H, W), got shape {tuple(images.shape)}"
            )
        if eps <= 0:
            raise ConfigError(f"ZCA eps must be positive, got {eps}; the official value is 0.1")
        flat = images.detach().reshape(images.shape[0], -1)  # (N, D)
        mean = _chunked_mean(flat, chunk)  # (D,) float64
        cov = _chunked_scatter(flat, mean, chunk) / (flat.shape[0] - 1)  # (D, D), unbiased
        eigvals, eigvecs = torch.linalg.eigh(cov)  # S (D,), U (D, D)
        # Round-off can leave tiny negative eigenvalues; the SVD kornia uses never does.
        eigvals = eigvals.clamp_min(0.0) + eps
        transform = (eigvecs * eigvals.rsqrt()) @ eigvecs.T  # U diag((S+eps)^-1/2) U^T
        inverse = (eigvecs * eigvals.sqrt()) @ eigvecs.T  # U diag((S+eps)^1/2) U^T
        return cls(float(eps), mean.float(), transform.float(), inverse.float())

    @property
    def dim(self) -> int:
        """D = C * H * W of the images the transform was fitted on."""
        return int(self.mean.shape[0])

    def _check(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(x.shape[0], -1) if x.ndim >= 2 else x
        if x.ndim < 2 or flat.shape[1] != self.dim:
            raise CompatibilityError(
                f"ZCA was fitted on images with {self.dim} values each, got shape "
                f"{tuple(x.shape)}; use the ZCA fitted on this dataset"
            )
        return flat

    def _get(self, name: str, like: torch.Tensor) -> torch.Tensor:
        """Tensor attribute `name` on `like`'s device and dtype (cached)."""
        tensor = getattr(self, name)
        if tensor.device == like.device and tensor.dtype == like.dtype:
            return tensor
        key = (name, like.device, like.dtype)
        if key not in self._moved:
            self._moved[key] = tensor.to(device=like.device, dtype=like.dtype)
        return self._moved[key]

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Whiten (N, C, H, W) raw images: (x - mean) @ T, same shape.

        Differentiable with respect to x (the transform itself is a constant).
        """
        flat = self._check(x)  # (N, D)
        mean, transform = self._get("mean", x), self._get("transform", x)
        parts = [(flat[i : i + CHUNK] - mean) @ transform for i in range(0, len(flat), CHUNK)]
        return torch.cat(parts).reshape(x.shape)

    def invert(self, x: torch.Tensor) -> torch.Tensor:
        """Map whitened (N, C, H, W) images back to raw pixels: x @ T_inv + mean."""
        flat = self._check(x)  # (N, D)
        mean, inverse = self._get("mean", x), self._get("inverse_transform", x)
        parts = [flat[i : i + CHUNK] @ inverse + mean for i in range(0, len(flat), CHUNK)]
        return torch.cat(parts).reshape(x.shape)

    def to(self, device: str | torch.device) -> ZCA:
        """Copy with its tensors on `device` (apply/invert also move them on the fly)."""
        return ZCA(
            self.eps,
            self.mean.to(device),
            self.transform.to(device),
            self.inverse_transform.to(device),
        )

    def state_dict(self) -> dict[str, torch.Tensor | float]:
        """Tensors (on CPU) and eps, for `torch.save(..., )` / `torch.load(weights_only=True)`."""
        return {
            "eps": self.eps,
            "mean": self.mean.detach().cpu(),
            "transform": self.transform.detach().cpu(),
            "inverse_transform": self.inverse_transform.detach().cpu(),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor | float]) -> ZCA:
        """Rebuild from `state_dict()` output, checking keys and shapes.

        Example:
            >>> z = ZCA.fit(torch.rand(8, 1, 2, 2))
            >>> ZCA.from_state_dict(z.state_dict()).dim
            4
        """
        missing = {"eps", "mean", "transform", "inverse_transform"} - set(state)
        if missing:
            raise ArtifactError(f"ZCA state lacks {sorted(missing)}; the file is not a ZCA state")
        mean, transform, inverse = state["mean"], state["transform"], state["inverse_transform"]
        dim = mean.shape[0] if isinstance(mean, torch.Tensor) and mean.ndim == 1 else -1
        if dim < 0 or any(
            not isinstance(m, torch.Tensor) or tuple(m.shape) != (dim, dim)
            for m in (transform, inverse)
        ):
            raise ArtifactError(
                "ZCA state has inconsistent shapes: mean must be (D,) and both transforms "
                "(D, D); the file is corrupt"
            )
        return cls(float(state["eps"]), mean.float(), transform.float(), inverse.float())


def _chunked_mean(flat: torch.Tensor, chunk: int) -> torch.Tensor:
    total = torch.zeros(flat.shape[1], dtype=torch.float64, device=flat.device)
    for start in range(0, flat.shape[0], chunk):
        total += flat[start : start + chunk].to(torch.float64).sum(dim=0)
    return total / flat.shape[0]


def _chunked_scatter(flat: torch.Tensor, mean: torch.Tensor, chunk: int) -> torch.Tensor:
    """(X - mu)^T (X - mu) in float64, one chunk of rows at a time."""
    scatter = torch.zeros(flat.shape[1], flat.shape[1], dtype=torch.float64, device=flat.device)
    for start in range(0, flat.shape[0], chunk):
        centred = flat[start : start + chunk].to(torch.float64) - mean
        scatter += centred.T @ centred
    return scatter
