"""datadistill: dataset distillation by trajectory matching and INFER, with the field's
evaluation protocols.

Importing the package sets up the CPU memory allocator, because every training step allocates
its activations afresh (a ConvNet activation at batch 256 is 134 MB) and first-touch page
faults on fresh memory made the memory-bound layers 3-7x slower on CPU (benchmarks/RESULTS.md
section 14). Neither setting changes a value, only the speed:

- ``THP_MEM_ALLOC_ENABLE=1`` (unless the variable is already set; ``0`` turns it off) asks
  PyTorch's CPU allocator for transparent huge pages. It is read at PyTorch's first CPU
  allocation, so it takes effect when this package is imported before any tensor is made.
- with glibc, ``mallopt`` keeps freed memory in the process: every allocation comes from the
  heap (no ``mmap`` per large tensor) and the heap is never trimmed, so a step reuses the
  pages of the previous one instead of faulting them in again. The process's resident
  memory then stays at its high-water mark. ``DATADISTILL_KEEP_FREED_MEMORY=0`` (set before
  the import) leaves glibc's defaults.
"""

import os

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")


def _keep_freed_memory() -> bool:
    """Tell glibc's malloc to serve every block from the heap and never give it back; False
    where it was not done (turned off, not Linux, not glibc)."""
    import sys

    if os.environ.get("DATADISTILL_KEEP_FREED_MEMORY", "1") == "0" or sys.platform != "linux":
        return False
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018  (glibc only: musl has no mallopt options)
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # <malloc.h>; a threshold of -1: never trim
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, -1))


KEEPS_FREED_MEMORY = _keep_freed_memory()

__version__ = "0.1.0"
