"""Real Ray Tune sweeps of the tiny model (1 worker of 0.5 CPU per trial): ASHA, MLflow nesting, failures, resume."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
import yaml

from tests.conftest import ROOT

pytestmark = pytest.mark.ray

SMALL = {
    "spec__resources": {"workers": 1, "cpus_per_worker": 0.5},
    "spec__training__max_steps": 6,
    "spec__training__eval_every": 2,
    "spec__training__warmup_steps": 0,
    "spec__checkpoint__every": 2,
}


def sweep(tiny_job, name: str, sweep_spec: dict, **overrides):
    return tiny_job(name, spec__sweep=sweep_spec, **{**SMALL, **overrides})


def run(job, **kw):
    from kubetrain.runtime.sweep import run_sweep

    return run_sweep(
        job, local_root=str(pathlib.Path(job.spec.checkpoint.storage).parent / "root"), show=False, **kw
    )


def children(client, result) -> dict:
    runs = client.search_runs(
        [client.get_run(result.parent_run_id).info.experiment_id],
        f"tags.`mlflow.parentRunId` = '{result.parent_run_id}'",
    )
    return {r.data.tags["kubetrain.trial"]: r for r in runs}


def test_asha_stops_weak_trials_and_every_trial_is_a_nested_mlflow_run(ray_session, tiny_job):
    from mlflow.tracking import MlflowClient

    from kubetrain.spec import load_job

    # A good learning rate and two far too high: a high one evaluated after the good one falls below
    # ASHA's cutoff at the first rung (grace period: 1 evaluation) and is stopped there.
    job = sweep(
        tiny_job,
        "asha",
        {
            "algorithm": "grid",
            "scheduler": "asha",
            "max_concurrent": 2,
            "grace_period": 1,
            "reduction_factor": 3,
            "parameters": {"training.learning_rate": {"type": "grid", "values": [0.01, 0.9, 0.9]}},
        },
    )
    result = run(job)
    assert result.succeeded, result.error
    by_status = {
        s: [t for t in result.trials if t.status == s] for s in ("completed", "stopped_early", "failed")
    }
    assert len(result.trials) == 3 and not by_status["failed"]
    assert by_status["stopped_early"], [(t.params, t.status, t.step) for t in result.trials]
    assert all(t.params["training.learning_rate"] == 0.9 for t in by_status["stopped_early"])
    assert all(t.iteration < 3 for t in by_status["stopped_early"])
    assert all(t.step == 6 and t.iteration == 3 for t in by_status["completed"])

    best = result.best
    assert best.params == {"training.learning_rate": 0.01} and best.status == "completed"
    assert result.best_checkpoint == os.path.join(best.run_dir, "final") and os.path.isdir(
        result.best_checkpoint
    )
    ready = load_job(pathlib.Path(result.best_job_path).read_text(), result.best_job_path)
    assert ready.spec.sweep is None and ready.spec.training.learning_rate == 0.01

    client = MlflowClient(result.tracking_uri)
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED" and "mlflow.parentRunId" not in parent.data.tags
    assert parent.data.metrics["best_eval_loss"] == pytest.approx(best.metrics["eval_loss"])
    assert parent.data.tags["kubetrain.best_trial"] == best.trial_id
    assert parent.data.metrics["trials_stopped_early"] == len(by_status["stopped_early"])
    assert {"plots/metric_per_trial.png", "plots/parameter_vs_metric.png"} <= {
        a.path for a in client.list_artifacts(result.parent_run_id, "plots")
    }
    assert "best_trainingjob.yaml" in {a.path for a in client.list_artifacts(result.parent_run_id)}

    kids = children(client, result)
    assert set(kids) == {t.trial_id for t in result.trials}
    for trial in result.trials:
        kid = kids[trial.trial_id]
        assert kid.info.experiment_id == parent.info.experiment_id
        assert kid.data.tags["kubetrain.trial.status"] == trial.status
        assert kid.info.status == {"completed": "FINISHED", "stopped_early": "KILLED"}[trial.status]
        assert float(kid.data.params["spec.training.learning_rate"]) == trial.params["training.learning_rate"]
        steps = [m.step for m in client.get_metric_history(kid.info.run_id, "train_loss")]
        assert steps and steps == sorted(steps) and steps[0] == 1
        if trial.status == "completed":
            assert [m.step for m in client.get_metric_history(kid.info.run_id, "eval_loss")] == [0, 2, 4, 6]


def test_an_interrupted_sweep_resumes_without_redoing_finished_trials_and_goes_on_past_a_failure(
    ray_session, tiny_job, tmp_path
):
    from mlflow.tracking import MlflowClient

    # Three trials, one at a time; the second has 2 training examples, which cannot fill one batch of 4,
    # so it fails while setting up (max_failed_trials: 1 lets the sweep go on).
    job = sweep(
        tiny_job,
        "resumable",
        {
            "algorithm": "grid",
            "max_concurrent": 1,
            "max_failed_trials": 1,
            "parameters": {"data.max_train_samples": {"type": "grid", "values": [64, 2, 48]}},
        },
    )
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(job.model_dump(mode="json", exclude_none=True)))
    state = pathlib.Path(job.spec.checkpoint.storage) / job.name / "sweep.json"

    # The first driver: `kubetrain run` in its own process group, killed once one trial has completed.
    env = {**os.environ, "PYTHONPATH": str(ROOT / "service"), "TUNE_GLOBAL_CHECKPOINT_S": "0"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "kubetrain.cli.main", "run", str(path)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        first = None
        deadline = time.monotonic() + 300
        while first is None and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(1)
            if state.exists():
                done = [t for t in json.loads(state.read_text())["trials"] if t["status"] == "completed"]
                first = done[0] if done else None
        assert first is not None and proc.poll() is None, (
            "the first driver ended before it could be interrupted"
        )
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    before = json.loads(state.read_text())

    result = run(job)
    assert result.succeeded, result.error
    assert result.resumed and result.parent_run_id == before["parent_run_id"]
    trials = {t.params["data.max_train_samples"]: t for t in result.trials}
    assert sorted(trials) == [2, 48, 64]
    assert trials[64].status == trials[48].status == "completed"
    assert trials[2].status == "failed" and "fewer than one optimizer step" in trials[2].error
    assert result.best in (trials[64], trials[48])

    client = MlflowClient(result.tracking_uri)
    per_trial: dict[str, list] = {}
    for r in client.search_runs(
        [client.get_run(result.parent_run_id).info.experiment_id],
        f"tags.`mlflow.parentRunId` = '{result.parent_run_id}'",
    ):
        per_trial.setdefault(r.data.tags["kubetrain.trial"], []).append(r)
    assert len(per_trial[first["trial_id"]]) == 1, "the finished trial was run again"
    for trial in result.trials:  # an interrupted trial's first run is closed, not left running
        runs = per_trial[trial.trial_id]
        assert all(r.info.status != "RUNNING" for r in runs)
        assert [r.data.tags.get("kubetrain.trial.status") for r in runs].count(trial.status) == 1
        assert {r.data.tags.get("kubetrain.trial.status") for r in runs} <= {trial.status, "interrupted"}
    assert [
        r.info.status
        for r in per_trial[trials[2].trial_id]
        if r.data.tags.get("kubetrain.trial.status") == "failed"
    ] == ["FAILED"]
