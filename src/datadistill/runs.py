"""The run driver: N independent runs -> seed -> build -> train -> test -> report.

Every protocol and baseline that reports "mean +- std over N runs" (classic, challenge,
cross-architecture, the random and full-data baselines, INFER's students, DD-Ranking's
rounds) hands :func:`run_all` a function of one run. Run ``i`` may depend on ``(seed, i)`` only
(derive its seeds with :func:`datadistill.training.run_seeds`), never on an earlier run, so the
runs can be spread over processes; results come back in run order whatever the order they ran in.
With a :class:`~datadistill.runtime.runlog.RunCache` (float results only), each finished run is
stored as it ends and runs already stored are not run again (an interrupted evaluation resumes).

Under ``torchrun`` with K processes the runs still to do are dealt out in rounds of K: in
each round rank r trains the round's r-th run, then every rank receives the round's results
(:func:`datadistill.distributed.all_gather_objects`), so every rank returns all N results, in
run order, equal to a single process's. Rank 0 alone reads and extends the cache, logs, calls
``after_run`` and shows progress; the cache it keeps resumes an interrupted evaluation with any
K. A run that raises stops every rank with its message.

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
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from datadistill import distributed
from datadistill.errors import DatadistillError
from datadistill.runtime.progress import progress_bar
from datadistill.training import run_seeds

if TYPE_CHECKING:
    from datadistill.runtime.runlog import RunCache

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


@dataclass(frozen=True)
class Group:
    """The processes that share the runs: this one's rank, how many there are, and how they
    exchange results (``gather(obj)``: every rank's obj in rank order; ``share(obj)``: rank
    0's obj everywhere). :meth:`current` is torch.distributed's group (one process when
    single); tests pass their own."""

    rank: int = 0
    size: int = 1
    gather: Callable[[Any], list] = lambda obj: [obj]
    share: Callable[[Any], Any] = lambda obj: obj

    @classmethod
    def current(cls) -> Group:
        if not distributed.active():
            return cls()
        return cls(distributed.rank(), distributed.world_size(),
                   distributed.all_gather_objects, distributed.broadcast_object)


class RunFailed(DatadistillError):
    """A run failed on another process; every process stops with its message."""


def run_all(num_runs: int, one_run: Callable[[Run], R], *, seed: int = 0,
            progress: bool = False, desc: str = "runs", label: str | None = None,
            cache: RunCache | None = None, fingerprint: str | None = None,
            after_run: Callable[[int, list[R]], None] | None = None,
            group: Group | None = None) -> RunResults[R]:
    """``one_run(Run.of(seed, i))`` for i = 0 .. num_runs - 1, gathered in run order.

    ``desc`` names the progress bar; each float result is logged as "<label> run i/n: test
    accuracy a" (``label`` defaults to ``desc``). With ``cache``, run i's result is looked
    up under (``fingerprint``, i) first and stored there when it finishes; ``fingerprint``
    names everything the result depends on. ``after_run(i, results of runs 0..i)`` is called
    as each run's result arrives (e.g. to save partial results).

    Several processes (``group``, default: torchrun's) must all call this with the same
    arguments; each trains its share and all return the same results. Results must be
    picklable then (floats, dataclasses of plain values).
    """
    group = group or Group.current()
    main = group.rank == 0
    cached: dict[int, tuple[Any, float]] = {}
    if cache is not None and main:
        cached = {i: done for i in range(num_runs)
                  if (done := cache.get(fingerprint, i)) is not None}
    if group.size > 1:  # rank 0's cache decides for all: every rank skips the same runs
        cached = group.share(cached)
    values: dict[int, Any] = {i: v for i, (v, _) in cached.items()}
    seconds: dict[int, float] = {i: s for i, (_, s) in cached.items()}
    todo = [i for i in range(num_runs) if i not in cached]
    bar = progress_bar(total=num_runs, initial=len(cached), enabled=progress and main, desc=desc,
                       leave=False, stage=True)
    for start in range(0, len(todo), group.size):
        batch = todo[start:start + group.size]  # run batch[r] on rank r
        mine = _one(one_run, seed, batch[group.rank]) if group.rank < len(batch) else None
        finished = [m for m in group.gather(_sendable(mine)) if m is not None]  # in run order
        _raise_failed(finished, mine, batch)
        for index, value, secs in finished:
            values[index], seconds[index] = value, secs
            if main:
                _record(index, num_runs, value, secs, label or desc, cache, fingerprint)
                if after_run is not None:
                    after_run(index, [values[j] for j in range(index + 1)])
            bar.update(1)
    bar.close()
    return RunResults([values[i] for i in range(num_runs)], [seconds[i] for i in range(num_runs)])


def _one(one_run: Callable[[Run], Any], seed: int, index: int) -> tuple:
    """(index, result, seconds) of one run, or (index, exception, None) when it raised."""
    start = time.perf_counter()
    try:
        value = one_run(Run.of(seed, index))
    except Exception as err:  # re-raised by _raise_failed, after the other ranks heard of it
        return index, err, None
    return index, value, round(time.perf_counter() - start, 3)


def _sendable(mine: tuple | None) -> tuple | None:
    """What the other ranks receive: a failed run's error as text (exceptions may not pickle)."""
    if mine is None or mine[2] is not None:
        return mine
    return mine[0], f"{type(mine[1]).__name__}: {mine[1]}", None


def _raise_failed(finished: list[tuple], mine: tuple | None, batch: list[int]) -> None:
    """Re-raise this rank's own failed run; a run failed on another rank stops this one too."""
    if mine is not None and mine[2] is None:
        raise mine[1]
    for index, error, secs in finished:
        if secs is None:
            raise RunFailed(f"run {index + 1} failed on rank {batch.index(index)}: {error}")


def _record(index: int, num_runs: int, value: Any, secs: float, label: str,
            cache: RunCache | None, fingerprint: str | None) -> None:
    if isinstance(value, float):
        log.info("%s run %d/%d: test accuracy %.4f", label, index + 1, num_runs, value)
    if cache is not None:
        cache.put(fingerprint, index, value, secs)
