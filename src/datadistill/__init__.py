"""datadistill: dataset distillation by trajectory matching and INFER, with the field's
evaluation protocols.

Importing the package asks PyTorch's CPU allocator for transparent huge pages
(``THP_MEM_ALLOC_ENABLE=1``, unless the variable is already set; ``0`` turns it off): a
ConvNet activation at batch 256 is 134 MB, a fresh allocation on every step, and first-touch
page faults on 4 KiB pages made the memory-bound layers 3-7x slower on CPU (benchmarks/RESULTS.md
section 14). The variable is read at PyTorch's first CPU allocation, so it takes effect when
this package is imported before any tensor is made; it changes no value, only the speed.
"""

import os

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

__version__ = "0.1.0"
