"""sweep.json is written at the end of a Tune step (after Tune's experiment checkpoint), not inside the callback."""

from __future__ import annotations

import json
import types

from kubetrain.runtime.sweep.callbacks import MONITORS, Forward
from kubetrain.runtime.sweep.monitor import SweepMonitor


def monitor(tmp_path) -> SweepMonitor:
    job = types.SimpleNamespace(spec=types.SimpleNamespace(sweep=types.SimpleNamespace(max_failed_trials=0)))
    tracker = types.SimpleNamespace(client=None, run_id="parent", uri="sqlite:///x.db")
    console = types.SimpleNamespace(update=lambda rows: None)
    return SweepMonitor(job, str(tmp_path), tracker, console)


def trial(trial_id: str, finished: bool):
    return types.SimpleNamespace(
        trial_id=trial_id,
        config={"training": {"learning_rate": 0.01}},
        last_result={"trial_finished": finished},
    )


def test_a_finished_trial_reaches_sweep_json_at_the_step_end_not_in_the_completion_callback(tmp_path):
    m = monitor(tmp_path)
    MONITORS["k"] = m
    try:
        forward = Forward("k")
        forward.on_trial_complete(0, [], trial("t1", finished=True))
        assert not (tmp_path / "sweep.json").exists()  # Tune has not saved its own state yet in this step
        forward.on_step_end(1, [])
        rows = json.loads((tmp_path / "sweep.json").read_text())["trials"]
        assert [(r["trial_id"], r["status"]) for r in rows] == [("t1", "completed")]

        forward.on_trial_complete(1, [], trial("t2", finished=False))
        assert len(json.loads((tmp_path / "sweep.json").read_text())["trials"]) == 1
        forward.on_step_end(2, [])
        rows = json.loads((tmp_path / "sweep.json").read_text())["trials"]
        assert [(r["trial_id"], r["status"]) for r in rows] == [("t1", "completed"), ("t2", "stopped_early")]
    finally:
        MONITORS.pop("k", None)
