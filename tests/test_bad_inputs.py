"""The bad-input table (docs/bad-inputs.md) stays true: its cases are refused cleanly.

The quick cases (refused before any training) run by default; all of them, including those
that first finish a run or start a second process, with `-m slow`.
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bad_inputs  # noqa: E402

QUICK = [c for c in bad_inputs.CASES
         if not c.child and not c.recoverable and c.setup.__name__ == "<lambda>"
         and not c.kind.startswith("run ")]
SLOW = [c for c in bad_inputs.CASES if c not in QUICK]


@pytest.mark.parametrize("case", QUICK, ids=[c.kind for c in QUICK])
def test_quick_bad_input_is_refused_cleanly(case):
    outcome = bad_inputs.run_case(case)
    assert outcome.clean, (outcome.code, outcome.message)


@pytest.mark.slow
@pytest.mark.parametrize("case", SLOW, ids=[c.kind for c in SLOW])
def test_every_bad_input_is_handled_cleanly(case):
    outcome = bad_inputs.run_case(case)
    assert outcome.clean, (outcome.code, outcome.message)


def test_the_table_lists_at_least_44_kinds():
    assert len({c.kind for c in bad_inputs.CASES}) >= 44


# Fast cases that need their own process (a crash must not take the test runner with it), or
# whose right answer is a success.
FAST_CHILD = [c for c in bad_inputs.CASES if c.kind in {
    "--threads 100000", "a set whose images are float16 (read as float32)"}]


@pytest.mark.parametrize("case", FAST_CHILD, ids=[c.kind for c in FAST_CHILD])
def test_fast_child_bad_input_is_refused_cleanly(case):
    outcome = bad_inputs.run_case(case)
    assert outcome.clean, (outcome.code, outcome.message)
