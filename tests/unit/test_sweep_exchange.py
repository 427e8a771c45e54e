"""pbt / bohb checkpoint exchange: where a trial Tune restarts from a checkpoint runs, and from which Ray Train checkpoint."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("ray.tune")

from ray import tune  # noqa: E402

from kubetrain.runtime.sweep import trial as sweep  # noqa: E402
from kubetrain.runtime.train.checkpoint import checkpoint_dir  # noqa: E402


def tune_checkpoint(tmp_path, **saved) -> tune.Checkpoint:
    d = tmp_path / "tune_ckpt"
    d.mkdir()
    (d / sweep.EXCHANGE_FILE).write_text(json.dumps(saved))
    return tune.Checkpoint.from_directory(str(d))


RESTARTS = [
    # (trial that restarts, checkpoint's trial and run, runs of the trial already there, expected start)
    (
        "a1b2c_00001",
        ("a1b2c_00001", "sw-a1b2c-00001"),
        [],
        {"run_name": "sw-a1b2c-00001-r1", "restored_from": "a1b2c_00001"},  # paused: its own checkpoint
    ),
    (
        "a1b2c_00001",
        ("a1b2c_00001", "sw-a1b2c-00001-r1"),
        ["sw-a1b2c-00001-r1"],
        {"run_name": "sw-a1b2c-00001-r2", "restored_from": "a1b2c_00001"},  # paused again, in a later run
    ),
    (
        "a1b2c_00001",
        ("a1b2c_00000", "sw-a1b2c-00000"),
        [],
        {"run_name": "sw-a1b2c-00001-r1", "restored_from": "a1b2c_00000"},  # exploits another trial
    ),
    (
        "a1b2c_00001",
        ("a1b2c_00002", "sw-a1b2c-00002-r1"),
        ["sw-a1b2c-00001-r1", "sw-a1b2c-00001-r2"],
        {"run_name": "sw-a1b2c-00001-r3", "restored_from": "a1b2c_00002"},  # a third restart
    ),
]


@pytest.mark.parametrize(
    "trial_id,saved,existing,expected", RESTARTS, ids=["own", "own-segment", "other", "third"]
)
def test_restart_point(tmp_path, trial_id, saved, existing, expected):
    trials = tmp_path / "trials"
    for name in existing + [saved[1]]:
        (trials / name).mkdir(parents=True, exist_ok=True)
    ckpt_dir = str(trials / saved[1] / "checkpoint_00000006")
    ckpt = tune_checkpoint(tmp_path, trial_id=saved[0], run_name=saved[1], step=6, train_checkpoint=ckpt_dir)
    got = sweep.restart_point(ckpt, trial_id, "sw", str(trials))
    assert got == {**expected, "init_checkpoint": ckpt_dir}


def test_the_checkpoint_a_trial_hands_over_is_the_runs_checkpoint_of_that_step():
    assert checkpoint_dir("/r/run", 12) == "/r/run/checkpoint_00000012"


def test_waiting_for_a_checkpoint_that_never_appears_fails_the_trial_with_its_path(tmp_path):
    with pytest.raises(RuntimeError, match="checkpoint_00000006, did not appear"):
        sweep.wait_for_checkpoint(str(tmp_path / "checkpoint_00000006"), timeout_s=0.6)
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "trainer_state.json").write_text("{}")
    sweep.wait_for_checkpoint(str(tmp_path / "done"), timeout_s=0.1)
