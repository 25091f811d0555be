"""Progress display: every progress bar of the package is made here.

On a terminal, :func:`progress_bar` is a tqdm bar. When stderr (where bars go) is not a
terminal, e.g. ``datadistill run > log 2>&1`` or a batch job, carriage-return frames would
fill the log with thousands of redrawn bars (nested ones for every evaluation run). There,
a bar marked ``stage=True`` prints one line when it ends (what it did, how long it took,
its last postfix) and every other bar prints nothing.

Example:
    >>> bar = progress_bar(range(3), desc="experts", stage=True, enabled=False)
    >>> [i for i in bar]
    [0, 1, 2]
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

from tqdm.auto import tqdm

from datadistill import distributed


def plural(n: int, word: str) -> str:
    """``n`` and ``word`` made plural by an ``s`` unless n is 1.

    >>> plural(1, "run"), plural(2, "expert"), plural(0, "network")
    ('1 run', '2 experts', '0 networks')
    """
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def interactive() -> bool:
    """True when stderr, where progress goes, is a terminal, or in a Jupyter kernel (whose
    bars are widgets, not carriage-return frames)."""
    stream = sys.stderr
    if getattr(stream, "isatty", None) and stream.isatty():
        return True
    return "ipykernel" in sys.modules


def progress_bar(iterable: Iterable | None = None, *, desc: str = "", total: int | None = None,
                 enabled: bool = True, stage: bool = False, **tqdm_kwargs: Any):
    """A tqdm bar on a terminal; elsewhere one line at the end for a ``stage``, else nothing.

    ``enabled=False`` (``progress=False`` in the library, ``--quiet`` in the CLI) shows
    nothing anywhere. The object iterates like ``iterable`` and has tqdm's ``update``,
    ``set_postfix`` and ``close`` and works as a context manager, whichever form it takes.
    """
    if enabled and not distributed.is_main():  # under torchrun, rank 0 alone shows progress
        enabled = False
    if enabled and interactive():
        return tqdm(iterable, desc=desc, total=total, **tqdm_kwargs)
    if enabled and stage:
        return StageLine(iterable, desc, total, tqdm_kwargs.get("initial", 0))
    return tqdm(iterable, desc=desc, total=total, disable=True, **tqdm_kwargs)


class StageLine:
    """Counts like a bar and prints ``desc: n/total in S s (postfix)`` once, when closed."""

    def __init__(self, iterable: Iterable | None, desc: str, total: int | None,
                 initial: int = 0) -> None:
        self.iterable, self.desc, self.n, self.initial = iterable, desc, int(initial), int(initial)
        if total is None and hasattr(iterable, "__len__"):
            total = initial + len(iterable)
        self.total, self.postfix, self.closed = total, "", False
        self.start = time.perf_counter()

    def __iter__(self) -> Iterator:
        for item in self.iterable:
            yield item
            self.n += 1
        self.close()

    def __enter__(self) -> StageLine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        count = f"{self.n}" if self.total is None else f"{self.n}/{self.total}"
        line = f"{self.desc}: {count} in {time.perf_counter() - self.start:.0f} s"
        if self.initial and self.n == self.initial:  # resumed with nothing left to do
            line = f"{self.desc}: {count} already done, nothing left (resumed)"
        print(line + (f" ({self.postfix})" if self.postfix else ""), file=sys.stderr,
              flush=True)
