"""Device names: the one place where ``"auto"`` becomes a concrete torch device.

Example:
    >>> resolve_device("cpu")
    'cpu'
    >>> resolve_device("auto") in ("cuda", "cpu")
    True
"""

from __future__ import annotations

import torch


def default_device() -> str:
    """``"cuda"`` when a GPU is visible, else ``"cpu"``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(device: str) -> str:
    """``device`` itself, or :func:`default_device` for ``"auto"``."""
    return default_device() if device == "auto" else device
