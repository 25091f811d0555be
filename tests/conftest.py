"""Shared test set-up: the package's environment variables cleared, one torch thread, `gpu`
tests skipped without CUDA, and a time limit on every test (tests/timelimit.py) so that a
hang fails and names the test.

The tests use tiny tensors, for which a single thread is faster than two and immune to
oversubscription when the machine is shared.
"""

import dataclasses
import os

# The suite runs the same whatever the user's environment: the package's switches and roots
# (a cache root, C kernels off, a data folder...) are cleared before it is imported; the tests
# that need one set it themselves. A cache root shared between tests, for one, made two
# tests' ImageNet caches collide. Only the tests' own time limit is kept.
KEPT_ENV = ("DATADISTILL_TEST_TIMELIMIT",)
for _key in [k for k in os.environ if k.startswith("DATADISTILL_") and k not in KEPT_ENV]:
    del os.environ[_key]

import pytest  # noqa: E402
import torch  # noqa: E402

from datadistill.data import prepare  # noqa: E402
from timelimit import (  # noqa: F401, E402  (hooks: a time limit on every test phase)
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
