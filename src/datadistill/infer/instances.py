"""An INFER set's training instances computed per batch instead of materialised at once.

``InferSet.materialise()`` expands K*C base images and K*M compensators into all
K*(M+1)*C instances: 36,000 images of 3x224x224 (22 GB in float32) at ImageNet-1K IPC 10,
196,000 (118 GB) at IPC 50. :class:`LazyInstances` holds only the base images and the
compensators and builds the rows a batch asks for, with the same arithmetic and order as
``materialise()`` (class-major: class c, group k, variant v; v = 0 is the base image, v = m + 1
adds u_{k,m}; clamped to the normalised image of [0, 1] pixels), so row i is bit-for-bit
``materialise().images[i]``. It supports what labelling and student training use: ``len``,
``shape``, ``ndim``, ``device``, ``to(device)`` and indexing by slice or index tensor.

Example:
    >>> rows = LazyInstances(infer_set)                        # doctest: +SKIP
    >>> torch.equal(rows[:8], infer_set.materialise().images[:8])   # doctest: +SKIP
    True
"""

from __future__ import annotations

import torch

from datadistill.infer.store import InferSet, _pixel_bounds


class LazyInstances:
    """The rows of ``materialise().images``, computed on demand from base + compensators."""

    ndim = 4

    def __init__(self, infer_set: InferSet, *, _tensors: tuple | None = None) -> None:
        self.info = infer_set.info
        if _tensors is None:
            base, comps = infer_set.base, infer_set.compensators  # (K, C, ...), (K, M, ...)
            zero = torch.zeros_like(comps[:, :1])
            _tensors = (base, torch.cat([zero, comps], 1))  # u: (K, M+1, Ch, H, W)
        self.base, self.u = _tensors
        self._set = infer_set
        k, c, variants = self.base.shape[0], self.base.shape[1], self.u.shape[1]
        self.k, self.c, self.variants = k, c, variants
        self.shape = torch.Size((c * k * variants, *self.base.shape[2:]))
        self.device, self.dtype = self.base.device, self.base.dtype

    def __len__(self) -> int:
        return self.shape[0]

    def to(self, device: str | torch.device) -> LazyInstances:
        """Base images and compensators on ``device`` (a fraction of the instances' size)."""
        tensors = (self.base.to(device), self.u.to(device))
        return LazyInstances(self._set, _tensors=tensors)

    def __getitem__(self, index) -> torch.Tensor:
        rows = torch.arange(len(self), device=self.device)[index]  # slice, tensor or int
        scalar = rows.dim() == 0
        rows = rows.reshape(-1).to(self.device)
        per_class = self.k * self.variants
        c, rest = rows // per_class, rows % per_class
        k, v = rest // self.variants, rest % self.variants
        x = self.base[k, c] + self.u[k, v]  # (B, Ch, H, W): the same sum as materialise()
        lo, hi = _pixel_bounds(self.info, x)
        x = torch.clamp(x, lo, hi)
        return x[0] if scalar else x
