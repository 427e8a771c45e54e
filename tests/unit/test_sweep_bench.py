"""The benchmark's measure: compute ASHA spends until its first evaluation at or below the random-search target."""

from __future__ import annotations

import importlib.util

import pytest

from tests.conftest import ROOT

spec = importlib.util.spec_from_file_location("asha_vs_random", ROOT / "bench" / "asha_vs_random.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)

# Two trials: (times of training steps, [(time, eval_loss)])
A = ([1, 2, 3, 4], [(2.5, 3.0), (4.5, 2.0)])
B = ([2.2, 2.4, 2.6], [(2.7, 2.5)])  # stopped after its first evaluation, yet its steps count


@pytest.mark.parametrize(
    "target,expected",
    [
        (2.5, {"reached": True, "steps": 5, "seconds": 1.7}),  # B's evaluation at 2.7: A's 2 steps + B's 3
        (2.0, {"reached": True, "steps": 7, "seconds": 3.5}),  # A's at 4.5: every step so far
        (3.0, {"reached": True, "steps": 4, "seconds": 1.5}),  # A's first at 2.5: steps at 1, 2, 2.2, 2.4
        (1.0, {"reached": False, "steps": 7, "seconds": None}),
    ],
)
def test_compute_to_reach(target, expected):
    got = bench.compute_to_reach([A, B], target, start=1.0)
    assert got["reached"] == expected["reached"] and got["steps"] == expected["steps"]
    assert (
        got["seconds"] == pytest.approx(expected["seconds"])
        if expected["seconds"]
        else got["seconds"] is None
    )


def test_training_seconds_sums_each_trials_span_from_first_step_to_last_record():
    # A: steps 1..4, last evaluation at 4.5 -> 3.5 s; B: 2.2 .. 2.7 -> 0.5 s; a trial with no records adds 0
    assert bench.training_seconds([A, B, ([], [])]) == pytest.approx(4.0)
