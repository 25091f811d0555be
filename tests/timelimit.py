"""A time limit on every test phase (setup, call, teardown), so a hang fails fast and names
the test instead of stalling the whole run.

``SIGALRM`` interrupts the test's Python code (a sleep, a wait on a subprocess or a lock, a
loop) and fails that phase with "time limit of N s exceeded". Limits: :data:`DEFAULT_LIMIT`
for default tests, :data:`SLOW_LIMIT` for ``@pytest.mark.slow`` ones;
``@pytest.mark.timelimit(N)`` sets one test's limit and the ``DATADISTILL_TEST_TIMELIMIT``
environment variable (seconds, ``0`` = off) replaces the default one. Where ``SIGALRM`` does
not exist (Windows) no limit is applied.

The default test that takes longest (two processes under torchrun resuming a distillation)
needs about 21 s on a 2-core AMD EPYC VM; 300 s leaves a margin of more than ten times for a
loaded machine.
"""

from __future__ import annotations

import contextlib
import os
import signal

import pytest

DEFAULT_LIMIT = 300.0  # seconds per phase of a default test
SLOW_LIMIT = 3600.0  # seconds per phase of a @pytest.mark.slow test
ENV = "DATADISTILL_TEST_TIMELIMIT"


class TimeLimitExceeded(Exception):
    """Raised in the test when its phase runs past the limit."""


def limit_for(item) -> float:
    """Seconds allowed to each phase of ``item`` (0: no limit)."""
    mark = item.get_closest_marker("timelimit")
    if mark is not None:
        return float(mark.args[0])
    if item.get_closest_marker("slow") is not None:
        return SLOW_LIMIT
    return float(os.environ.get(ENV, DEFAULT_LIMIT))


@contextlib.contextmanager
def _alarm(item, phase: str):
    seconds = limit_for(item)
    if seconds <= 0 or not hasattr(signal, "setitimer"):
        yield
        return

    def expired(signum, frame):
        raise TimeLimitExceeded(f"{item.nodeid}: {phase} ran past its time limit of "
                                f"{seconds:g} s (tests/timelimit.py)")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def pytest_configure(config):
    config.addinivalue_line("markers", "timelimit(seconds): this test's time limit per phase")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    with _alarm(item, "setup"):
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    with _alarm(item, "call"):
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    with _alarm(item, "teardown"):
        yield
