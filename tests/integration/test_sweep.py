"""Real Ray Tune sweeps of the tiny model (1 worker of 0.5 CPU per trial): ASHA, MLflow nesting, failures, resume."""

from __future__ import annotations

import json
import math
import os
import pathlib
import re
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
    # ASHA's cutoff at the first rung (grace period: 1 evaluation) and is stopped there. One trial at a time:
    # ASHA is asynchronous, so a high one reaching the rung first would be kept (nothing to compare with), and
    # at step 6 lr 0.9 (5.550) even ends below 0.01 (5.575) on this tiny model.
    job = sweep(
        tiny_job,
        "asha",
        {
            "algorithm": "grid",
            "scheduler": "asha",
            "max_concurrent": 1,
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
    # 2 records cannot fill a step, or (when both prompts fill max_length) leave nothing to learn: either way
    # the trial fails with the spec field to change, and the sweep goes on.
    assert trials[2].status == "failed"
    assert "fewer than one optimizer step" in trials[2].error or "spec.data.max_length" in trials[2].error
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


def test_pbt_restarts_a_weak_trial_from_a_strong_trials_checkpoint_with_a_perturbed_learning_rate(
    ray_session, tiny_job
):
    from mlflow.tracking import MlflowClient

    # Two trials at once; seed 1 draws learning rates 0.0325 (good) and 0.64 (far too high). Both pause at
    # their 3rd evaluation (step 6; synch: together, so which one is ahead does not matter); then the worse
    # restarts from the better's checkpoint, in a new run '<trial>-r1', with the better's learning rate
    # x0.8 or x1.2 (or a fresh draw), and the better goes on from its own checkpoint, also in a new run.
    job = sweep(
        tiny_job,
        "pbt",
        {
            "algorithm": "random",
            "scheduler": "pbt",
            "trials": 2,
            "max_concurrent": 2,
            "perturbation_interval": 3,
            "quantile_fraction": 0.5,
            "synch": True,
            "seed": 1,
            "parameters": {"training.learning_rate": {"type": "loguniform", "low": 1e-3, "high": 0.9}},
        },
        spec__training__max_steps=8,
    )
    result = run(job)
    assert result.succeeded, result.error
    assert len(result.trials) == 2 and not [t for t in result.trials if t.status == "failed"]

    client = MlflowClient(result.tracking_uri)
    runs = {
        r.data.tags["mlflow.runName"]: r
        for r in client.search_runs(
            [client.get_run(result.parent_run_id).info.experiment_id],
            f"tags.`mlflow.parentRunId` = '{result.parent_run_id}'",
        )
    }
    restarted = [r for r in runs.values() if r.data.tags.get("kubetrain.restored_from")]
    first = [r for r in runs.values() if r not in restarted]
    exploited = [
        r for r in restarted if r.data.tags["kubetrain.restored_from"] != r.data.tags["kubetrain.trial"]
    ]
    assert exploited, "no trial was restarted from another trial's checkpoint"
    assert sorted(round(float(r.data.params["spec.training.learning_rate"]), 4) for r in first) == [
        0.0325,
        0.6425,
    ]
    ids = {t.trial_id for t in result.trials}
    assert len(exploited) == 1 and len(restarted) == 2  # the better trial went on in a new run too
    assert {
        exploited[0].data.tags["kubetrain.trial"],
        exploited[0].data.tags["kubetrain.restored_from"],
    } == ids
    for r in restarted:
        assert re.fullmatch(r"pbt-[0-9a-f]{5}-\d{5}-r1", r.data.tags["mlflow.runName"])

    row, restart = next((t, r) for t in result.trials for r in t.restarts if r["from_trial"] != t.trial_id)
    assert restart["run"] == exploited[0].data.tags["mlflow.runName"]
    trials_dir = os.path.join(job.spec.checkpoint.storage, job.name, "trials")
    donor_run = os.path.basename(os.path.dirname(restart["checkpoint"]))
    assert os.path.dirname(os.path.dirname(restart["checkpoint"])) == trials_dir
    assert os.path.isdir(restart["checkpoint"]) and donor_run != restart["run"]
    # The new run continued from the checkpoint's step, not from scratch
    donor_step = json.loads(pathlib.Path(restart["checkpoint"], "trainer_state.json").read_text())["step"]
    assert donor_step == 6 and restart["step"] == donor_step

    # ... and trained with its own (perturbed) learning rate, not the one in the optimizer state it loaded:
    # at the same step, both runs' logged learning rate is their configured one times the same schedule factor
    mine, donor = runs[restart["run"]], runs[donor_run]
    lr_mine, lr_donor = (float(r.data.params["spec.training.learning_rate"]) for r in (mine, donor))
    assert lr_mine != pytest.approx(lr_donor)
    logged = {
        name: {m.step: m.value for m in client.get_metric_history(r.info.run_id, "learning_rate")}
        for name, r in (("mine", mine), ("donor", donor))
    }
    step = donor_step + 1
    assert min(logged["mine"]) == step
    if step in logged["donor"]:
        assert logged["mine"][step] / lr_mine == pytest.approx(logged["donor"][step] / lr_donor, rel=1e-6)
    else:  # the donor was itself restarted before this step: compare the factor with the cosine schedule
        total = job.spec.training.max_steps
        assert logged["mine"][step] / lr_mine == pytest.approx(0.5 * (1 + math.cos(math.pi * step / total)))


def test_bohb_pauses_its_trials_at_a_rung_and_continues_the_best_from_its_own_checkpoint(
    ray_session, tiny_job
):
    from kubetrain.runtime.sweep_space import trial_name

    # BOHB runs HyperBand synchronously (HyperBandForBOHB): the trials of a bracket pause at the bracket's rung
    # (here 1 evaluation) until all have reached it; the best then continues from its own checkpoint of that
    # evaluation (a new run '<trial>-r1') and the rest end there. One trial at a time and seed 3 make that
    # order fixed: BOHB draws learning rates 0.0424, 0.4445, 0.0012 for the first bracket, so its last trial
    # (0.0012, hardly trained) is not the best and one of the two paused trials is resumed.
    job = sweep(
        tiny_job,
        "bohb",
        {
            "algorithm": "bohb",
            "scheduler": "hyperband",
            "trials": 4,
            "max_concurrent": 1,
            "reduction_factor": 3,
            "seed": 3,
            "parameters": {"training.learning_rate": {"type": "loguniform", "low": 1e-3, "high": 0.9}},
        },
    )
    result = run(job)
    assert result.succeeded, result.error
    rows = [(t.trial_id, t.params, t.status, t.step, t.iteration, t.restarts) for t in result.trials]
    assert len(result.trials) == 4 and not [t for t in result.trials if t.status == "failed"], rows
    continued = [(t, r) for t in result.trials for r in t.restarts if r["from_trial"] == t.trial_id]
    assert continued, rows
    for trial, restart in continued:
        assert restart["run"] == trial_name(job.name, trial.trial_id, 1)
        # it went on from the step of the evaluation it paused at, in a run of its own
        assert (
            restart["step"] in (2, 4)
            and os.path.basename(os.path.dirname(restart["checkpoint"])) != restart["run"]
        )
        assert trial.step > restart["step"]
    assert max(t.step for t in result.trials) == 6
    assert [t for t in result.trials if t.step < 6], (
        "every trial trained to the end: nothing was cut at a rung"
    )
    assert result.best.step == 6  # the trials trained longest reach the lowest loss
