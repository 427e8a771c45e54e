"""The Tune function trainable: one run of the job per trial (or per restart of one), each evaluation a report.

Every periodic evaluation becomes one `tune.report`, so schedulers count time in evaluations. With exchange
(pbt, bohb), each report carries a small Tune checkpoint naming the training checkpoint of that evaluation; a
trial Tune starts from such a checkpoint (another trial's after a pbt exploit, its own after a pause) runs a
new segment '<trial>-r<n>' from it (run_job's init_checkpoint).

A trial whose workers fit in one process (one worker, a local Ray) trains here, in the trial's own process
(run_job in_process), which Tune reuses for the next trial (reuse_actors): no Ray Train controller, worker
group or placement group, and the imports are paid once per process, not per trial.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field

from .. import contract as ev
from .. import storage
from . import space

EXCHANGE_FILE = "kubetrain_trial.json"  # the whole Tune checkpoint: which training checkpoint to start from
CHECKPOINT_WAIT_S = 120.0


@dataclass(frozen=True)
class TrialSetup:
    """What every trial of one sweep shares (Tune passes it to each trial with tune.with_parameters)."""

    base: dict  # the sweep's TrainingJob as JSON
    sweep_name: str
    trials_root: str  # where the trials' runs (and their checkpoints) are stored
    experiment: str
    local_root: str
    parent_run_id: str | None
    worker_env: dict | None = None
    exchange: bool = False  # pbt, bohb: checkpoints pass between trials
    keep_last: int | None = None
    in_process: bool = False  # train in the trial's process, not in a Ray Train worker group
    finished: dict = field(default_factory=dict)  # {trial_id: row} finished before a resumed driver died


def run_trial(config: dict, *, setup: TrialSetup) -> None:
    """Train the job with `config` applied, reporting each evaluation; raise if the run failed."""
    from ray import tune

    from ..run.job import run_job

    trial_id = tune.get_context().get_trial_id()
    if trial_id in setup.finished:
        return _replay(setup.finished[trial_id])
    start = _start_point(setup, trial_id, tune.get_checkpoint() if setup.exchange else None)
    job = space.trial_job(
        setup.base,
        config,
        name=start["run_name"],
        storage=setup.trials_root,
        experiment=setup.experiment,
        parent_name=setup.sweep_name,
        keep_last=setup.keep_last,
    )
    reporter = Reporter(trial_id, start, storage.join(setup.trials_root, start["run_name"]), setup.exchange)
    if start.get("init_checkpoint"):
        wait_for_checkpoint(start["init_checkpoint"])
    try:
        result = run_job(
            job,
            local_root=setup.local_root,
            show=False,
            parent_run_id=setup.parent_run_id,
            extra_tags=_tags(setup.sweep_name, trial_id, start),
            worker_env=setup.worker_env,
            on_event=reporter.on_event,
            init_checkpoint=start.get("init_checkpoint"),
            report_status=False,  # the TrainingJob's status shows the sweep (SweepMonitor.report), not one trial
            in_process=setup.in_process,
        )
    except SystemExit:  # Tune stopped the trial at a report (a scheduler's decision): tune.report exits there
        # run_job has ended an in-process recipe before its next micro-batch (the checkpoint a paused trial
        # restarts from is complete). Tune expects that exit: a stopped function that returns instead stalls
        # the process's next trial; the run's MLflow run, left running, is ended as KILLED by the monitor.
        raise
    if not result.succeeded:
        raise RuntimeError(result.error or "the trial's training run failed")
    reporter.finish()
    return None


class Reporter:
    """The run's events as Tune reports: one per periodic evaluation, the last held until the run has ended."""

    def __init__(self, trial_id: str, start: dict, run_root: str, exchange: bool):
        self.trial_id, self.run_root, self.exchange = trial_id, run_root, exchange
        self.info: dict = {
            k: v for k, v in start.items() if k in ("run_name", "restored_from", "init_checkpoint")
        }
        self.last: dict | None = None
        self.handed_over: str | None = None  # the checkpoint the last report named (exchange)

    def on_event(self, event: ev.Event) -> None:
        if isinstance(event, ev.RunStarted):
            self.info.update(mlflow_run_id=event.mlflow_run_id or "", run_dir=event.run_dir)
        elif isinstance(event, ev.Started):
            self.info.update(
                total_steps=event.total_steps,
                start_step=event.step,
                placement_group=event.placement_group or "",
            )
        elif isinstance(event, ev.Evaluated) and event.tag == "periodic" and event.metrics:
            metrics = {**event.metrics, "step": event.step, **self.info}
            if event.step >= self.info.get("total_steps", float("inf")):
                self.last = metrics  # held until the run has saved its model and closed its MLflow run
            else:
                self.report(metrics)

    def finish(self) -> None:
        if self.last is not None:
            self.report({**self.last, "trial_finished": 1})

    def report(self, metrics: dict) -> None:
        """One tune.report, which raises SystemExit when Tune has stopped the trial meanwhile."""
        from ray import tune

        if not self.exchange:
            tune.report(metrics)
            return
        from ..train.checkpoint import checkpoint_dir

        self.handed_over = checkpoint_dir(self.run_root, metrics["step"])
        with tempfile.TemporaryDirectory(prefix="kubetrain-tune-") as tmp:
            with open(os.path.join(tmp, EXCHANGE_FILE), "w") as f:
                saved = {
                    "trial_id": self.trial_id,
                    "run_name": self.info["run_name"],
                    "step": metrics["step"],
                    "train_checkpoint": self.handed_over,
                }
                json.dump(saved, f)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


def _start_point(setup: TrialSetup, trial_id: str, checkpoint) -> dict:
    """The run this trial starts: its first ('<sweep>-<trial>'), or a restart from a Tune checkpoint."""
    if checkpoint is None:
        return {"run_name": space.trial_name(setup.sweep_name, trial_id)}
    return restart_point(checkpoint, trial_id, setup.sweep_name, setup.trials_root)


def restart_point(checkpoint, trial_id: str, sweep_name: str, trials_root: str) -> dict:
    """Where a trial Tune (re)starts from a checkpoint runs: {"run_name", "init_checkpoint", "restored_from"}.

    Always a new run, '<trial>-r<n>' (the next free n), started from the checkpoint's evaluation: another
    trial's (pbt exploit) or its own (it was paused, or the sweep resumed), so the run's steps continue from
    the evaluation Tune counted last, whatever the paused run did after it.
    """
    with checkpoint.as_directory() as d:
        with open(os.path.join(d, EXCHANGE_FILE)) as f:
            saved = json.load(f)
    segment = 1
    while storage.exists(storage.join(trials_root, space.trial_name(sweep_name, trial_id, segment))):
        segment += 1
    return {
        "run_name": space.trial_name(sweep_name, trial_id, segment),
        "init_checkpoint": saved["train_checkpoint"],
        "restored_from": saved["trial_id"],
    }


def wait_for_checkpoint(path: str, timeout_s: float = CHECKPOINT_WAIT_S) -> None:
    """Wait for a checkpoint a trial reported: its evaluation is reported before the checkpoint of that step
    is complete (another process may still be writing it)."""
    from ..train.checkpoint import STATE

    deadline = time.monotonic() + timeout_s
    while not storage.exists(storage.join(path, STATE)):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the checkpoint to restart from, {path}, did not appear in {timeout_s:.0f} s")
        time.sleep(0.5)


def _replay(row: dict) -> None:
    """A trial that finished before the last driver died (the journal has it): its outcome again, no training."""
    from ray import tune

    if row["status"] == "failed":
        raise RuntimeError(row.get("error") or "the trial failed")
    last = {k: v for k, v in row.get("last_result", {}).items() if k.startswith("eval_") or k == "step"}
    finished = {"trial_finished": 1} if row["status"] == "completed" else {}
    tune.report({**row.get("metrics", {}), **last, **finished, "replayed": 1})


def _tags(sweep_name: str, trial_id: str, start: dict) -> dict[str, str]:
    tags = {"kubetrain.sweep": sweep_name, "kubetrain.trial": trial_id}
    if start.get("restored_from"):
        tags["kubetrain.restored_from"] = start["restored_from"]
    return tags
