"""``--threads``: torch's intra-op thread count, set once per process by the CLI.

One torch thread by default, chosen with benchmarks/threads.py (benchmarks/RESULTS.md
section 8): for the small models of digits, MNIST and CIFAR at low IPC a second thread splits
little work and spins against any other busy process on the same cores (several times slower
there). Importing this module loads no torch (``datadistill --help`` shows the option).
"""

from __future__ import annotations

import argparse
import os

from datadistill.errors import ConfigError

DEFAULT_THREADS = 1


def apply_threads(requested: int | None) -> int:
    """Set torch's intra-op thread count once for this process; returns the count in use.

    ``None`` (no ``--threads``): :data:`DEFAULT_THREADS`, unless ``OMP_NUM_THREADS`` is set,
    which is then respected. ``0``: torch's own default (one per core).

    Example:
        >>> apply_threads(1)
        1
    """
    import torch

    if requested is None:
        if os.environ.get("OMP_NUM_THREADS"):
            return torch.get_num_threads()
        requested = DEFAULT_THREADS
    if requested < 0:
        raise ConfigError(f"--threads must be >= 0 (0: one per core), got {requested}")
    if requested > max_threads():  # OpenMP crashes the process on absurd counts (100000)
        raise ConfigError(f"--threads {requested} is more than {max_threads()} (4 per core of "
                          f"the {os.cpu_count()} here, at least 256); use 0 for one per core")
    if requested > 0:
        torch.set_num_threads(requested)
    return torch.get_num_threads()


def max_threads() -> int:
    """The largest ``--threads`` accepted: 4 per core, at least 256."""
    return max(256, 4 * (os.cpu_count() or 1))


def add_threads_option(p: argparse.ArgumentParser, default) -> None:
    """``--threads N`` on ``p``; ``default`` None on the main parser, SUPPRESS on a
    sub-command's (so ``run --threads 2`` works as well as ``--threads 2 run``)."""
    p.add_argument("--threads", type=int, default=default, metavar="N",
                   help=f"torch CPU threads (default {DEFAULT_THREADS}, or OMP_NUM_THREADS "
                        "when set; 0: one per core)")
