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
  the import) leaves glibc's defaults. Adjoint distillation steps return blocks of 32 MB and
  more (:mod:`datadistill.runtime.allocator`).
"""

import os

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")


from datadistill.runtime.allocator import keep_freed_memory  # noqa: E402

KEEPS_FREED_MEMORY = keep_freed_memory()

__version__ = "0.1.0"
