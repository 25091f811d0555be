"""FTD's exponential moving average of the synthetic images.

FTD (Du et al., "Minimizing the Accumulated Trajectory Error to Improve Dataset Distillation",
CVPR 2023, section 4.2, ``ModelEmaV2([image_syn])`` in ``distill/distill_FTD.py``) keeps, after
every outer step,

    ema <- decay * ema + (1 - decay) * images,

starting from a copy of the initial images; the distiller calls it only after an image update,
so an iteration skipped by DATM's loss threshold leaves it unchanged (no official code has both).
The EMA never feeds back into the optimisation; it
is a separate output, evaluated and saved on its own (research note trajectory-matching.md
section 3.2). Evaluate it from a freshly initialised network: the official code reuses the
network already trained on the raw images, so its EMA accuracy is after 2 x 1000 epochs.

Example:
    >>> x = torch.zeros(2, 1, 2, 2)
    >>> ema = ImageEMA(x, decay=0.5)
    >>> ema.update(torch.ones(2, 1, 2, 2)); float(ema.images.mean())
    0.5
"""

from __future__ import annotations

import torch

from datadistill.errors import ConfigError


def check_ema_config(decay: float | None) -> None:
    """The EMA axis of a distillation config (``distill.ema_decay``; None: no EMA).

    >>> check_ema_config(0.9995)
    """
    if decay is not None and not 0.0 <= decay < 1.0:
        raise ConfigError(f"ema_decay must be in [0, 1), got {decay}; FTD uses 0.999-0.9999.")


class ImageEMA:
    """EMA of a tensor of synthetic images (N, C, H, W), detached from autograd."""

    def __init__(self, images: torch.Tensor, decay: float) -> None:
        check_ema_config(decay)
        self.decay = float(decay)
        self.images = images.detach().clone()  # (N, C, H, W), never requires grad
        self.num_updates = 0

    @torch.no_grad()
    def update(self, images: torch.Tensor) -> None:
        """ema <- decay * ema + (1 - decay) * images (call after each optimiser step)."""
        if images.shape != self.images.shape:
            raise ConfigError(f"ImageEMA.update got images {tuple(images.shape)}, expected "
                              f"{tuple(self.images.shape)}.")
        self.images.mul_(self.decay).add_(images.detach().to(self.images), alpha=1 - self.decay)
        self.num_updates += 1

    def state_dict(self) -> dict[str, torch.Tensor | float | int]:
        """Tensors and numbers only, so checkpoints load with ``weights_only=True``."""
        return {"images": self.images.clone(), "decay": self.decay,
                "num_updates": self.num_updates}

    def load_state_dict(self, state: dict[str, torch.Tensor | float | int]) -> None:
        """Restore from :meth:`state_dict` (images keep this EMA's device and dtype)."""
        images = state["images"]
        if not isinstance(images, torch.Tensor) or images.shape != self.images.shape:
            raise ConfigError("ImageEMA state does not match this synthetic set's shape; was it "
                              "saved for another ipc or dataset?")
        self.images = images.detach().to(self.images).clone()
        self.decay = float(state["decay"])
        self.num_updates = int(state["num_updates"])
