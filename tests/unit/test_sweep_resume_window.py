"""A trial that finished just before the driver died is known finished on resume, whatever Tune's state says."""

from __future__ import annotations

import json
import types

import pytest

from kubetrain.runtime.sweep import budget
from kubetrain.runtime.sweep.callbacks import MONITORS, Forward
from kubetrain.runtime.sweep.journal import Journal
from kubetrain.runtime.sweep.monitor import SweepMonitor, TrialStatus


def monitor(tmp_path) -> SweepMonitor:
    job = types.SimpleNamespace(spec=types.SimpleNamespace(sweep=types.SimpleNamespace(max_failed_trials=0)))
    tracker = types.SimpleNamespace(client=None, run_id="parent", uri="sqlite:///x.db")
    console = types.SimpleNamespace(update=lambda rows: None)
    return SweepMonitor(job, str(tmp_path), tracker, console)


def trial(trial_id: str, finished: bool, status: str = "TERMINATED"):
    return types.SimpleNamespace(
        trial_id=trial_id,
        status=status,
        config={"training.learning_rate": 0.01},
        last_result={"trial_finished": finished},
        error_file=None,
    )


def test_a_trial_finished_before_the_step_ended_is_finished_for_the_next_driver(tmp_path):
    m = monitor(tmp_path)
    MONITORS["k"] = m
    try:
        forward = Forward("k")
        forward.on_trial_start(0, [], trial("t1", False, "RUNNING"))
        forward.on_trial_start(0, [], trial("t2", False, "RUNNING"))
        m.save()  # sweep.json as an earlier step end left it: both running
        forward.on_trial_complete(1, [], trial("t1", finished=True))
        # the driver dies here: before the step's end, so before Tune's state or sweep.json show it
    finally:
        MONITORS.pop("k", None)
    saved = {r["trial_id"]: r["status"] for r in json.loads((tmp_path / "sweep.json").read_text())["trials"]}
    assert saved == {"t1": "running", "t2": "running"}

    again = monitor(tmp_path)
    again.load(resuming=True)
    assert {t: r.status for t, r in again.rows.items()} == {"t1": "completed", "t2": "pending"}
    assert list(again.finished()) == ["t1"] and again.finished()["t1"]["status"] == "completed"


def test_a_replayed_trial_keeps_its_row(tmp_path):
    m = monitor(tmp_path)
    Journal(str(tmp_path)).append({"trial_id": "t1", "params": {}, "status": "stopped_early", "step": 4})
    m.load(resuming=True)
    m.on_start(trial("t1", False, "RUNNING"))
    m.on_result(trial("t1", False, "RUNNING"), {"replayed": 1, "eval_loss": 9.0, "step": 4})
    m.on_complete(trial("t1", finished=False))
    row = m.rows["t1"]
    assert row.status == TrialStatus.STOPPED_EARLY and row.metrics == {} and row.step == 4


def test_a_new_sweep_of_the_same_name_starts_without_the_old_journal(tmp_path):
    Journal(str(tmp_path)).append({"trial_id": "old", "params": {}, "status": "completed"})
    m = monitor(tmp_path)
    assert m.load(resuming=False) == {} and m.rows == {}
    assert monitor(tmp_path).load(resuming=True) == {} and not Journal(str(tmp_path)).read()


def test_a_torn_last_line_of_the_journal_is_skipped(tmp_path):
    journal = Journal(str(tmp_path))
    journal.append({"trial_id": "t1", "status": "completed"})
    with open(journal.path, "a") as f:
        f.write('{"trial_id": "t2", "sta')
    assert journal.read() == [{"trial_id": "t1", "status": "completed"}]


@pytest.mark.parametrize(
    "statuses,limit,stops",
    [
        (["failed"], 0, True),
        (["failed", "completed"], 1, False),
        (["failed", "failed", "running"], 1, True),
        (["paused", "stopped_early"], 0, False),
    ],
)
def test_the_failure_budget(statuses, limit, stops):
    reason = budget.stop_reason(statuses, limit)
    assert (reason is not None) == stops
    if stops:
        assert f"(max_failed_trials: {limit})" in reason


class DriverDied(BaseException):
    """The driver killed while it tags a trial's MLflow run."""


def test_a_failed_trial_is_in_the_journal_before_its_run_is_tagged_and_its_replay_tags_it(tmp_path):
    tags: list[tuple[str, str]] = []

    def set_tag(run_id, key, value):
        if not tags:
            tags.append(("died", value))
            raise DriverDied
        tags.append((run_id, value))

    client = types.SimpleNamespace(
        set_tag=set_tag,
        get_run=lambda run_id: types.SimpleNamespace(info=types.SimpleNamespace(status="FAILED")),
    )
    m = monitor(tmp_path)
    m.tracker.client = client
    m.rows["t2"] = m._row(trial("t2", False, "RUNNING"))
    m.rows["t2"].mlflow_run_id = "run-of-t2"
    with pytest.raises(DriverDied):
        m.on_error(trial("t2", False, "ERROR"))
    # the outcome was durable before the run was tagged: the next driver replays the trial, not reruns it
    again = monitor(tmp_path)
    again.tracker.client = client
    again.load(resuming=True)
    assert list(again.finished()) == ["t2"] and again.finished()["t2"]["mlflow_run_id"] == "run-of-t2"
    again.on_error(trial("t2", False, "ERROR"))  # Tune's replay of it (trial.py's _replay raises its error)
    assert tags[-1] == ("run-of-t2", "failed") and again.rows["t2"].status == TrialStatus.FAILED
