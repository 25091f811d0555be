"""Shared test set-up: one torch thread, `gpu` tests skipped without CUDA, and a time limit
on every test (tests/timelimit.py) so that a hang fails and names the test.

The tests use tiny tensors, for which a single thread is faster than two and immune to
oversubscription when the machine is shared.
"""

import dataclasses

import pytest
import torch

from datadistill.data import prepare
from timelimit import (  # noqa: F401  (hooks: a time limit on every test phase)
    pytest_runtest_call,
    pytest_runtest_setup,
    pytest_runtest_teardown,
)


def pytest_configure(config):
    torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def digits():
    """The embedded digits with a 300-image training split, for fast experts."""
    real = prepare("digits")
    train = dataclasses.replace(real.train, images=real.train.images[:300],
                                labels=real.train.labels[:300])
    return dataclasses.replace(real, train=train)
