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
from collections.abc import Callable

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
    from kubetrain.runtime.sweep.driver import run_sweep

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

    def one_completed() -> bool:
        return state.exists() and any(
            t["status"] == "completed" for t in json.loads(state.read_text())["trials"]
        )

    _kill_driver_once(path, tmp_path, env, one_completed, poll_s=1.0)
    before = json.loads(state.read_text())
    first = next(t for t in before["trials"] if t["status"] == "completed")

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
    from kubetrain.runtime.sweep.space import trial_name

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


def _kill_driver_once(path: pathlib.Path, cwd, env: dict, done: Callable[[], bool], poll_s: float) -> None:
    """`kubetrain run` in its own process group, killed (SIGKILL, all of it) as soon as done() is true."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "kubetrain.cli.main", "run", str(path)],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline and not done():
            time.sleep(poll_s)
        assert done() and proc.poll() is None, "the first driver ended before it could be interrupted"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_a_trial_that_finished_just_before_the_driver_died_is_not_run_again(ray_session, tiny_job, tmp_path):
    from mlflow.tracking import MlflowClient

    from kubetrain.runtime.sweep.journal import FILE

    job = sweep(
        tiny_job,
        "window",
        {
            "algorithm": "grid",
            "max_concurrent": 1,
            "max_failed_trials": 1,
            # the second trial fails setting up (2 examples cannot fill a batch), before or after the kill
            "parameters": {"data.max_train_samples": {"type": "grid", "values": [64, 2]}},
        },
    )
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(job.model_dump(mode="json", exclude_none=True)))
    sweep_dir = pathlib.Path(job.spec.checkpoint.storage) / job.name
    # Tune's default checkpoint period, lengthened so that its saved state (written at the first step) never
    # shows the finished trial: the window is certain, not a race. (TUNE_GLOBAL_CHECKPOINT_S=0 would close it.)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "service"), "TUNE_GLOBAL_CHECKPOINT_S": "3600"}
    _kill_driver_once(path, tmp_path, env, (sweep_dir / FILE).exists, poll_s=0.2)
    first = json.loads((sweep_dir / FILE).read_text().splitlines()[0])
    assert first["status"] == "completed"

    result = run(job)
    assert result.succeeded, result.error
    assert result.resumed and [t.status for t in result.trials] == ["completed", "failed"]
    client = MlflowClient(result.tracking_uri)
    runs = [r for r in children_runs(client, result) if r.data.tags["kubetrain.trial"] == first["trial_id"]]
    assert [(r.info.status, r.data.tags["kubetrain.trial.status"]) for r in runs] == [
        ("FINISHED", "completed")
    ]
    row = next(t for t in result.trials if t.trial_id == first["trial_id"])
    assert row.metrics == first["metrics"] and row.step == 6


def children_runs(client, result) -> list:
    return client.search_runs(
        [client.get_run(result.parent_run_id).info.experiment_id],
        f"tags.`mlflow.parentRunId` = '{result.parent_run_id}'",
    )


# What a Ray Train run starts in Ray besides Tune's trial actor: a trial in its own process has none of it.
RUN_ACTORS = {"TrainController", "RayTrainWorker", "PlacementGroupCleaner", "_QueueActor", "DatasetManager"}


def _ray_usage() -> tuple[dict, int, int]:
    """Live Ray actors by class, and the raylet's worker processes: how many, and their RSS in bytes."""
    import psutil
    import ray

    actors: dict[str, int] = {}
    for actor in ray._private.state.actors().values():
        if actor["State"] == "ALIVE":
            actors[actor["ActorClassName"]] = actors.get(actor["ActorClassName"], 0) + 1
    raylet = next(p for p in psutil.process_iter(["name"]) if p.info["name"] == "raylet")
    workers = [p for p in raylet.children(recursive=True) if p.name().startswith("ray::")]
    return actors, len(workers), sum(p.memory_info().rss for p in workers)


def test_ray_actors_and_processes_stay_flat_from_trial_to_trial(ray_session, tiny_job, monkeypatch):
    from kubetrain.runtime.sweep import callbacks

    # ASHA stops the high learning rates at their first rung: stopped trials are the ones that used to leave
    # a PlacementGroupCleaner actor (and its process, ~200 MB) behind for good. One worker: the trials train
    # in Tune's reused trial process (a Ray Train trial's own cleaner: the test after this one).
    job = sweep(
        tiny_job,
        "flat",
        {
            "algorithm": "grid",
            "scheduler": "asha",
            "max_concurrent": 1,
            "grace_period": 1,
            "reduction_factor": 3,
            "parameters": {"training.learning_rate": {"type": "grid", "values": [0.01, 0.9, 0.9, 0.9]}},
        },
    )
    seen: list[tuple[dict, int, int]] = []
    complete = callbacks.Forward.on_trial_complete

    def counted(self, iteration, trials, trial, **info):
        complete(self, iteration, trials, trial, **info)
        seen.append(_ray_usage())

    monkeypatch.setattr(callbacks.Forward, "on_trial_complete", counted)
    result = run(job)
    assert result.succeeded, result.error
    assert len(seen) == 4 and [t.status for t in result.trials].count("stopped_early") >= 1, seen
    assert all(not RUN_ACTORS & set(actors) for actors, _, _ in seen), seen
    assert all(actors == seen[0][0] for actors, _, _ in seen), seen  # the same live actors after every trial
    processes = [n for _, n, _ in seen]
    assert max(processes[1:]) <= processes[0], seen  # no process (nor its memory) left behind per trial


def _state(actor_id: str) -> str:
    import ray

    return ray._private.state.actors(actor_id)["State"]


def _wait_for(actor_id: str, state: str) -> None:
    deadline = time.monotonic() + 60
    while _state(actor_id) != state and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _state(actor_id) == state


def test_a_placement_group_cleaner_whose_controller_died_is_ended(ray_session):
    import ray

    from kubetrain.runtime.sweep.cleanup import end_orphaned_cleaners

    @ray.remote(num_cpus=0)
    class Controller:  # starts Ray Train's own cleaner, as a TorchTrainer's controller does
        def start_cleaner(self) -> str:
            from ray.train.v2._internal.execution.controller.placement_group_cleaner import (
                PlacementGroupCleaner,
            )

            me = ray.get_runtime_context().get_actor_id()
            cls = ray.remote(num_cpus=0)(PlacementGroupCleaner)
            self.cleaner = cls.options(lifetime="detached").remote(
                controller_actor_id=me, check_interval_s=0.2, get_actor_timeout_s=1, stop_timeout=2
            )
            ray.get(self.cleaner.start_monitoring.remote())
            return self.cleaner._actor_id.hex()

    controller = Controller.remote()
    cleaner = ray.get(controller.start_cleaner.remote())
    ray.kill(controller)  # what Tune ending a trial's process does to its run's controller
    _wait_for(controller._actor_id.hex(), "DEAD")
    assert _state(cleaner) == "ALIVE"  # without the dashboard it cannot tell, and would poll forever
    assert end_orphaned_cleaners() == 1
    _wait_for(cleaner, "DEAD")
    assert end_orphaned_cleaners() == 0
