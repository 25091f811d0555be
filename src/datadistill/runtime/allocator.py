"""The CPU allocator settings the package makes on import (see ``datadistill/__init__.py``).

Two glibc ``mallopt`` options (``<malloc.h>``), set from Python with ``ctypes``; nothing here
imports torch, so the package can call it before any tensor exists:

- ``M_MMAP_MAX = 0``: every block comes from the heap, none gets its own mapping;
- ``M_TRIM_THRESHOLD = -1``: the heap is never trimmed, freed memory stays in the process.

A step then reuses the pages the previous step freed instead of faulting them in again. In
adjoint mode the one-step graphs are freed and rebuilt at every step between blocks that live
on (the parameter snapshots, the adjoint), and a heap serving the large activations as well
grows with the holes they leave (a CIFAR-10 IPC 10 / 30-step iteration peaked at 1.68 GB
instead of 0.85 GB); :func:`large_blocks_returned` gives blocks of 32 MB and more their own
mapping again for the duration of such a step.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import sys
from collections.abc import Iterator

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4
LARGE_BLOCK = 32 << 20  # glibc's largest mmap threshold on 64-bit systems
_GLIBC_MMAP_MAX = 65536  # glibc's default M_MMAP_MAX


@functools.cache
def _glibc():
    """glibc's libc on Linux, or None (other platforms, musl); looked up once."""
    if sys.platform != "linux":
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018  (glibc only)
    except (OSError, AttributeError):
        return None
    return libc


def keep_freed_memory() -> bool:
    """Serve every block from the heap and never trim it; False where it was not done
    (``DATADISTILL_KEEP_FREED_MEMORY=0``, not Linux, not glibc)."""
    if os.environ.get("DATADISTILL_KEEP_FREED_MEMORY", "1") == "0":
        return False
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, -1))


@contextlib.contextmanager
def large_blocks_returned(active: bool = True) -> Iterator[None]:
    """Within the block, allocations of :data:`LARGE_BLOCK` bytes and more get their own
    mapping and go back to the kernel when freed; smaller ones still come from the kept heap.
    Does nothing when ``active`` is false or freed memory is not kept."""
    import datadistill

    libc = _glibc() if active and datadistill.KEEPS_FREED_MEMORY else None
    if libc is None:
        yield
        return
    libc.mallopt(M_MMAP_THRESHOLD, LARGE_BLOCK)
    libc.mallopt(M_MMAP_MAX, _GLIBC_MMAP_MAX)
    try:
        yield
    finally:
        libc.mallopt(M_MMAP_MAX, 0)
