"""The run driver: N independent runs -> seed -> build -> train -> test -> report.

Every protocol and baseline that reports "mean +- std over N runs" (classic, challenge,
cross-architecture, the random and full-data baselines, INFER's students, DD-Ranking's
rounds), and every store of trained networks (the expert trajectories, INFER's teachers), hands
:func:`run_all` a function of one run. Run ``i`` may depend on ``(seed, i)`` only
(derive its seeds with :func:`datadistill.training.run_seeds`), never on an earlier run, so the
runs can be spread over processes; results come back in run order whatever the order they ran in.
Runs already finished are not run again, so an interrupted call resumes: ``done`` says which
they are, either :class:`Cached` (a :class:`~datadistill.runtime.runlog.RunCache` of float
results, each run stored as it ends: the evaluations) or :class:`OnDisk` (a run that writes its
own file is finished when the file is there: experts, INFER's teachers).

Under ``torchrun`` with K processes the runs still to do are dealt out in rounds of K: in
each round rank r trains the round's r-th run, then every rank receives the round's results
(:func:`datadistill.distributed.all_gather_objects`), so every rank returns all N results, in
run order, equal to a single process's. Rank 0 alone asks ``done`` and records in it, logs, calls
``after_run`` and shows progress; what it finds finished decides for every rank, so an
interrupted call resumes with any K. Before each exchange every rank waits without a time limit
(:func:`datadistill.distributed.wait_for_others`): a rank with no run in the last round may
wait for a whole training (a teacher of hours). A run that raises stops every rank with its
message; when run_all returns, every run of every rank has ended.

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
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

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
    0's obj everywhere; ``wait()``: until every rank arrives, however long). :meth:`current`
    is torch.distributed's group (one process when single); tests pass their own."""

    rank: int = 0
    size: int = 1
    gather: Callable[[Any], list] = lambda obj: [obj]
    share: Callable[[Any], Any] = lambda obj: obj
    wait: Callable[[], None] = lambda: None

    @classmethod
    def current(cls) -> Group:
        if not distributed.active():
            return cls()
        return cls(distributed.rank(), distributed.world_size(),
                   distributed.all_gather_objects, distributed.broadcast_object,
                   distributed.wait_for_others)


@dataclass(frozen=True)
class Show:
    """What run_all shows: a progress bar named ``desc`` (when ``progress``), and each float
    result logged as "<label> run i/n: test accuracy a" (``label`` defaults to ``desc``)."""

    progress: bool = False
    desc: str = "runs"
    label: str | None = None


class Done(Protocol):
    """Where run_all finds the runs finished earlier and records those that finish (rank 0)."""

    def get(self, index: int) -> tuple[Any, float] | None:
        """(result, seconds) of run ``index`` when it is finished, else None."""

    def put(self, index: int, value: Any, seconds: float) -> None:
        """Record run ``index``, just finished."""


@dataclass(frozen=True)
class Cached:
    """Finished runs in a :class:`~datadistill.runtime.runlog.RunCache` under ``fingerprint``
    (everything a result depends on): run i is looked up under (fingerprint, i) and stored
    there when it finishes."""

    cache: RunCache
    fingerprint: str | None = None

    def get(self, index: int) -> tuple[Any, float] | None:
        return self.cache.get(self.fingerprint, index)

    def put(self, index: int, value: Any, seconds: float) -> None:
        self.cache.put(self.fingerprint, index, value, seconds)


@dataclass(frozen=True)
class OnDisk:
    """Runs that write their own file (an expert, a teacher): run i is finished when
    ``exists(i)``; its result is then None (0 seconds), and the run records itself.

    Example:
        >>> run_all(3, lambda run: run.index, done=OnDisk(lambda i: i == 1)).values
        [0, None, 2]
    """

    exists: Callable[[int], bool]

    def get(self, index: int) -> tuple[Any, float] | None:
        return (None, 0.0) if self.exists(index) else None

    def put(self, index: int, value: Any, seconds: float) -> None:
        """Nothing: the run wrote its file."""


class RunFailed(DatadistillError):
    """A run failed on another process; every process stops with its message."""


def _finished(num_runs: int, done: Done | None, group: Group) -> dict[int, tuple[Any, float]]:
    """{index: (result, seconds)} of the runs ``done`` holds, as rank 0 sees them, on every rank
    (every rank skips the same runs)."""
    held: dict[int, tuple[Any, float]] = {}
    if done is not None and group.rank == 0:
        held = {i: run for i in range(num_runs) if (run := done.get(i)) is not None}
    return group.share(held) if group.size > 1 else held


def pending(num_runs: int, done: Done | None, group: Group | None = None) -> list[int]:
    """The runs of ``num_runs`` that :func:`run_all` would run now (those ``done`` does not
    hold), as rank 0 sees them, on every rank; every rank of ``group`` must call it.

    Example:
        >>> pending(4, OnDisk(lambda i: i < 2))
        [2, 3]
    """
    held = _finished(num_runs, done, group or Group.current())
    return [i for i in range(num_runs) if i not in held]


def run_all(num_runs: int, one_run: Callable[[Run], R], *, seed: int = 0,
            show: Show = Show(), done: Done | None = None,
            after_run: Callable[[int, list[R]], None] | None = None,
            group: Group | None = None) -> RunResults[R]:
    """``one_run(Run.of(seed, i))`` for i = 0 .. num_runs - 1, gathered in run order.

    ``show`` names the progress bar and the log lines. Runs that ``done`` holds are not run
    (their results come from it) and each run that finishes is recorded there. ``after_run(i,
    results of runs 0..i)`` is called as each run's result arrives (e.g. to save partial
    results).

    Several processes (``group``, default: torchrun's) must all call this with the same
    arguments; each trains its share and all return the same results. Results must be
    picklable then (floats, dataclasses of plain values).
    """
    group = group or Group.current()
    main = group.rank == 0
    cached = _finished(num_runs, done, group)
    values: dict[int, Any] = {i: v for i, (v, _) in cached.items()}
    seconds: dict[int, float] = {i: s for i, (_, s) in cached.items()}
    todo = [i for i in range(num_runs) if i not in cached]
    bar = progress_bar(total=num_runs, initial=len(cached), enabled=show.progress and main,
                       desc=show.desc, leave=False, stage=True)
    for start in range(0, len(todo), group.size):
        batch = todo[start:start + group.size]  # run batch[r] on rank r
        mine = _one(one_run, seed, batch[group.rank]) if group.rank < len(batch) else None
        if group.size > 1:
            group.wait()  # a rank with nothing (left) to run waits here for the others
        finished = [m for m in group.gather(_sendable(mine)) if m is not None]  # run order
        _raise_failed(finished, mine, batch)
        for index, value, secs in finished:
            values[index], seconds[index] = value, secs
            if main:
                _record(index, num_runs, value, secs, show, done)
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


def _record(index: int, num_runs: int, value: Any, secs: float, show: Show,
            done: Done | None) -> None:
    if isinstance(value, float):
        log.info("%s run %d/%d: test accuracy %.4f", show.label or show.desc, index + 1, num_runs,
                 value)
    if done is not None:
        done.put(index, value, secs)
