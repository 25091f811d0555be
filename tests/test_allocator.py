"""The CPU allocator settings the package makes on import (``datadistill/__init__.py``)."""

import json
import os
import platform
import subprocess
import sys

import pytest

_PROBE = r"""
import json, os
import datadistill, torch

def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

from datadistill.runtime.allocator import large_blocks_returned

def released(mb=64):
    x = torch.ones((mb << 20) // 4)  # every page touched
    before = rss()
    del x
    return (before - rss()) / 2**20

kept = released()
with large_blocks_returned():
    inside = released(96)  # larger than the kept hole, which would be reused first
print(json.dumps({"keeps": datadistill.KEEPS_FREED_MEMORY,
                  "thp": os.environ.get("THP_MEM_ALLOC_ENABLE"),
                  "released_mb": kept, "inside_mb": inside, "after_mb": released()}))
"""

glibc_linux = pytest.mark.skipif(
    sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")


def _probe(**env) -> dict:
    full = {k: v for k, v in os.environ.items()
            if k not in ("THP_MEM_ALLOC_ENABLE", "DATADISTILL_KEEP_FREED_MEMORY")} | env
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                         env=full, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


@glibc_linux
def test_freed_tensor_memory_stays_in_the_process_for_the_next_step():
    """A freed 64 MB tensor is not handed back to the kernel (the next step's activations
    reuse its pages without faulting them in); with the variable at 0, glibc's default
    returns it at once (a block that large is its own mmap)."""
    kept = _probe()
    assert kept["keeps"] is True and kept["thp"] == "1"
    assert kept["released_mb"] < 8 and kept["after_mb"] < 8, kept
    default = _probe(DATADISTILL_KEEP_FREED_MEMORY="0", THP_MEM_ALLOC_ENABLE="0")
    assert default["keeps"] is False and default["thp"] == "0"
    assert default["released_mb"] > 56, default


@glibc_linux
def test_adjoint_steps_hand_large_blocks_back():
    """Inside ``large_blocks_returned`` (adjoint mode's passes) a new 96 MB block goes back
    to the kernel when freed; outside it, freed memory is kept again."""
    got = _probe()
    assert got["inside_mb"] > 88 and got["released_mb"] < 8 and got["after_mb"] < 8, got
