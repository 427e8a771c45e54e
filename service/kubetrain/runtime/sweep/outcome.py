"""What a sweep leaves: the best trial as a ready-to-run job, the Pareto front, and its MLflow parent run."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field

import yaml

from ...spec import TrainingJob
from ..run.tracking import Tracker, git_commit, versions
from . import space
from .monitor import SweepMonitor, TrialRow, TrialStatus
from .report import log_plots


@dataclass
class SweepResult:
    """What a finished (or failed) sweep produced."""

    name: str
    succeeded: bool
    sweep_dir: str
    trials: list[TrialRow] = field(default_factory=list)
    best: TrialRow | None = None
    best_job_path: str | None = None
    best_checkpoint: str | None = None
    pareto: list[TrialRow] = field(default_factory=list)
    parent_run_id: str | None = None
    tracking_uri: str | None = None
    resumed: bool = False
    error: str | None = None
    seconds: float = 0.0
    mlflow_hint: str = ""


def finish(job: TrainingJob, monitor: SweepMonitor, result: SweepResult, started: float) -> SweepResult:
    """Pick the best trial, write its ready-to-run job, fill the parent run, and print the summary."""
    sweep, tracker = job.spec.sweep, monitor.tracker
    result.trials = list(monitor.rows.values())
    scored = [r for r in result.trials if sweep.metric in r.metrics]
    if scored:
        best = (min if sweep.mode == "min" else max)(scored, key=lambda r: r.metrics[sweep.metric])
        _record_best(job, tracker, result, best)
    if sweep.second_objective is not None:
        _record_pareto(job, tracker, result)
    close_orphans(tracker)
    counts = {s: sum(r.status == s for r in result.trials) for s in ("completed", "stopped_early", "failed")}
    tracker.log_metrics({f"trials_{k}": v for k, v in counts.items()}, 0)
    for png in log_plots(result.trials, [o.metric for o in sweep.objectives()], sweep, result.sweep_dir):
        tracker.log_artifact(png, "plots")
    if monitor.stop_reason and not result.error:
        result.error = f"sweep stopped: {monitor.stop_reason}"
    if result.best is None and not result.error:
        result.error = "no trial reported the metric " + sweep.metric
    result.succeeded = result.error is None
    tracker.end("FINISHED" if result.succeeded else "FAILED")
    result.mlflow_hint = tracker.ui_hint()
    result.seconds = time.time() - started
    monitor.console.summary(result, sweep)
    return result


def _record_best(job: TrainingJob, tracker: Tracker, result: SweepResult, best: TrialRow) -> None:
    """The best trial into the result, best_trainingjob.yaml and the parent run's metrics and tags."""
    sweep = job.spec.sweep
    result.best = best
    result.best_checkpoint = checkpoint_of(best)
    data = space.runnable_yaml_data(
        job.model_dump(mode="json", exclude_unset=True), best.params, name=f"{job.name}-best"[:63].rstrip("-")
    )
    result.best_job_path = os.path.join(result.sweep_dir, "best_trainingjob.yaml")
    with open(result.best_job_path, "w") as f:
        f.write(
            f"# Best trial {best.trial_id} of sweep {job.name}: {sweep.metric} {best.metrics[sweep.metric]:.6g}\n"
        )
        exploits = [r for r in best.restarts if r["from_trial"] != best.trial_id]
        if exploits:
            f.write(
                f"# pbt: these are the trial's last hyperparameters; its model was trained under a schedule "
                f"of them, restarted {len(exploits)} time(s) from other trials (sweep.json)\n"
            )
        yaml.safe_dump(data, f, sort_keys=False)
    tracker.log_metrics({f"best_{k}": v for k, v in best.metrics.items()}, best.step)
    tracker.set_tags(
        {
            "kubetrain.best_trial": best.trial_id,
            "kubetrain.best_run_id": best.mlflow_run_id or "",
            "kubetrain.best_checkpoint": result.best_checkpoint or "",
            **{f"kubetrain.best.{k}": str(v) for k, v in best.params.items()},
        }
    )
    tracker.log_artifact(result.best_job_path)


def _record_pareto(job: TrainingJob, tracker: Tracker, result: SweepResult) -> None:
    """Trials no other trial beats on both objectives: the result and pareto_front.json."""
    objectives = [(o.metric, o.mode) for o in job.spec.sweep.objectives()]
    front = space.pareto_front([{**r.metrics, "_row": r} for r in result.trials], objectives)
    result.pareto = [f["_row"] for f in front]
    rows = [
        {"trial_id": r.trial_id, "params": r.params, **{m: r.metrics[m] for m, _ in objectives}}
        for r in result.pareto
    ]
    pareto_path = os.path.join(result.sweep_dir, "pareto_front.json")
    with open(pareto_path, "w") as f:
        json.dump(rows, f, indent=2)
    tracker.log_artifact(pareto_path)


def open_parent(tracker: Tracker, run_id: str | None) -> None:
    """Start the sweep's parent run, or reopen the one a previous (interrupted) driver started."""
    if run_id:
        from mlflow.tracking import MlflowClient

        try:
            client = MlflowClient(tracking_uri=tracker.uri)
            run = client.get_run(run_id)
            client.update_run(run_id, status="RUNNING")
            tracker.client, tracker.run_id, tracker.experiment_id = client, run_id, run.info.experiment_id
            return
        except Exception:
            pass  # the old run is gone: start a new parent
    commit, dirty = git_commit()
    tags = {f"version.{k}": v for k, v in versions().items()}
    tags["kubetrain.kind"] = "sweep"
    if commit:
        tags.update({"git.commit": commit, "git.dirty": str(dirty).lower()})
    tracker.start(tags)


def close_orphans(tracker: Tracker) -> None:
    """Child runs whose outcome no driver recorded once Tune is done (no `kubetrain.trial.status` tag) were left
    by an interrupted driver: still RUNNING, or ended by their trial just before that driver died (Tune reran
    those trials). They are tagged interrupted, and ended if still running."""
    if tracker.client is None or not tracker.run_id:
        return
    try:
        children = tracker.client.search_runs(
            [tracker.experiment_id], f"tags.`mlflow.parentRunId` = '{tracker.run_id}'"
        )
        for child in children:
            if "kubetrain.trial.status" in child.data.tags:
                continue
            tracker.client.set_tag(child.info.run_id, "kubetrain.trial.status", "interrupted")
            if child.info.status == "RUNNING":
                tracker.client.set_terminated(child.info.run_id, "KILLED")
    except Exception:  # tracking trouble never fails the sweep
        pass


def checkpoint_of(row: TrialRow) -> str | None:
    """A completed trial's final model directory, else its latest training checkpoint."""
    if not row.run_dir:
        return None
    final = os.path.join(row.run_dir, "final")
    if row.status == TrialStatus.COMPLETED and os.path.isdir(final):
        return final
    from ..train.checkpoint import latest

    return latest(row.run_dir)
