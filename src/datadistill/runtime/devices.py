"""Device names: the one place where ``"auto"`` becomes a concrete torch device.

Example:
    >>> resolve_device("cpu")
    'cpu'
    >>> resolve_device("auto") in ("cuda", "cpu")
    True
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

logger = logging.getLogger(__name__)


def default_device() -> str:
    """``"cuda"`` when a GPU is visible, else ``"cpu"``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(device: str) -> str:
    """``device`` itself, or :func:`default_device` for ``"auto"``."""
    return default_device() if device == "auto" else device


def free_memory(device: str) -> int:
    """Bytes the device can still give: CUDA ``mem_get_info``, CPU MemAvailable."""
    if str(device).startswith("cuda"):
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    return _meminfo_available()


def _meminfo_available(path: str = "/proc/meminfo") -> int:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    logger.warning("cannot read MemAvailable from %s; the memory check is skipped", path)
    return 2**62
