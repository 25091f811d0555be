"""The run driver: N independent runs -> seed -> build -> train -> test -> report.

Every protocol and baseline that reports "mean +- std over N runs" (classic, challenge,
cross-architecture, the random and full-data baselines, INFER's students) hands
:func:`run_all` a function of one run. Run ``i`` may depend on ``(seed, i)`` only (derive its
seeds with :func:`datadistill.training.run_seeds`), never on an earlier run, so the runs can
later be spread over processes; results come back in run order whatever the order they ran in.
With a :class:`~datadistill.runlog.RunCache` (float results only), each finished run is stored
as it ends and runs already stored are not run again (an interrupted evaluation resumes).

Example:
    >>> results = run_all(3, lambda run: 0.5 + 0.1 * run.index, seed=0)
    >>> [round(v, 1) for v in results.values], len(results.seconds)
    ([0.5, 0.6, 0.7], 3)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, TypeVar

from datadistill.progress import progress_bar
from datadistill.training import run_seeds

if TYPE_CHECKING:
    from datadistill.runlog import RunCache

log = logging.getLogger(__name__)
R = TypeVar("R")


@dataclass(frozen=True)
class Run:
    """One run of ``num_runs``: its index, the base seed, and the seeds derived from both."""

    index: int
    seed: int
    init_seed: int
    train_seed: int

    @classmethod
    def of(cls, seed: int, index: int) -> Run:
        init_seed, train_seed = run_seeds(seed, index)
        return cls(index, seed, init_seed, train_seed)


@dataclass
class RunResults(Generic[R]):
    """What each run returned, in run order, and its wall-clock seconds."""

    values: list[R] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)


def run_all(num_runs: int, one_run: Callable[[Run], R], *, seed: int = 0,
            progress: bool = False, desc: str = "runs", label: str | None = None,
            cache: RunCache | None = None, fingerprint: str | None = None,
            after_run: Callable[[int, list[R]], None] | None = None) -> RunResults[R]:
    """``one_run(Run.of(seed, i))`` for i = 0 .. num_runs - 1, gathered in run order.

    ``desc`` names the progress bar; each float result is logged as "<label> run i/n: test
    accuracy a" (``label`` defaults to ``desc``). With ``cache``, run i's result is looked
    up under (``fingerprint``, i) first and stored there when it finishes; ``fingerprint``
    names everything the result depends on. ``after_run(i, results so far)`` is called as
    each run's result arrives (e.g. to save partial results).
    """
    results: RunResults[R] = RunResults()
    for index in progress_bar(range(num_runs), enabled=progress, desc=desc, leave=False,
                              stage=True):
        done = cache.get(fingerprint, index) if cache else None
        if done is not None:  # finished by an earlier, interrupted call
            results.values.append(done[0])
            results.seconds.append(done[1])
            continue
        start = time.perf_counter()
        results.values.append(one_run(Run.of(seed, index)))
        results.seconds.append(round(time.perf_counter() - start, 3))
        if isinstance(results.values[-1], float):
            log.info("%s run %d/%d: test accuracy %.4f", label or desc, index + 1, num_runs,
                     results.values[-1])
        if cache:
            cache.put(fingerprint, index, results.values[-1], results.seconds[-1])
        if after_run is not None:
            after_run(index, results.values)
    return results
