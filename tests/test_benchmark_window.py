"""The M-DATM window search's candidate rule (benchmarks/mdatm_window.py)."""

import os
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from mdatm_window import candidate_windows  # noqa: E402


def test_candidates_are_fractions_of_datm_width_from_t_minus():
    assert candidate_windows(0, 4, [0.25, 0.5, 0.75, 1.0]) == [
        (0.25, 1), (0.5, 2), (0.75, 3), (1.0, 4)]
    # Tiny ImageNet IPC 10: DATM's [10, 50); k = 0.5 keeps [10, 30)
    assert (0.5, 30) in candidate_windows(10, 50, [0.25, 0.5, 1.0])


def test_candidates_round_up_and_drop_duplicates():
    # ceil keeps every window non-empty; 0.1 and 0.25 of width 2 both give T+ = 1
    assert candidate_windows(0, 2, [0.1, 0.25, 1.0]) == [(0.1, 1), (1.0, 2)]


@pytest.mark.parametrize("low, high, fractions, message", [
    (4, 4, [0.5], "is empty"),
    (0, 4, [0.0], "outside (0, 1]"),
    (0, 4, [1.5], "outside (0, 1]"),
])
def test_bad_search_inputs_are_named(low, high, fractions, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        candidate_windows(low, high, fractions)


def test_a_candidate_is_claimed_once_and_a_stale_claim_is_taken_over(tmp_path):
    import subprocess

    from mdatm_window import claim

    lock = tmp_path / "work" / "mdatm_window_ipc10_tplus2.claim"
    assert claim(lock) and lock.read_text() == str(os.getpid())
    assert not claim(lock)  # held by a live process (this one)
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    lock.write_text(done.stdout.strip())  # the owner has exited
    assert claim(lock)
