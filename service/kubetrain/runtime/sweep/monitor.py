"""The driver's view of a sweep: one row per trial, its status, MLflow child, and sweep.json, fed by Tune's events."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from enum import StrEnum

from . import budget, space
from .journal import Journal

CLEANER_WATCH_S = 60.0


class TrialStatus(StrEnum):
    """A trial's state in the table, sweep.json and its MLflow run's kubetrain.trial.status tag."""

    PENDING = "pending"  # not started yet, or interrupted by a driver that died (Tune reruns it)
    RUNNING = "running"
    PAUSED = (
        "paused"  # pbt exploit or a HyperBandForBOHB rung: its run ended; Tune restarts it from a checkpoint
    )
    COMPLETED = "completed"  # trained to its last step
    STOPPED_EARLY = "stopped_early"  # a scheduler (asha, hyperband) ended it
    FAILED = "failed"

    @property
    def is_terminal(self) -> bool:
        return self in (TrialStatus.COMPLETED, TrialStatus.STOPPED_EARLY, TrialStatus.FAILED)


@dataclass
class TrialRow:
    """One trial as the table, MLflow and the result see it."""

    trial_id: str
    params: dict
    status: TrialStatus = TrialStatus.PENDING
    iteration: int = 0
    step: int = 0
    metrics: dict = field(default_factory=dict)
    mlflow_run_id: str | None = None
    run_dir: str | None = None
    error: str | None = None
    history: list = field(default_factory=list)  # [{"time", "step", "iteration", metric...}]
    placement_group: str | None = None  # of the trial's Ray Train workers (none when it trains in-process)
    restarts: list = field(default_factory=list)  # pbt: [{"from_trial", "checkpoint", "step", "run"}]
    last_result: dict = field(
        default_factory=dict
    )  # Tune's last result: replayed if Tune reruns a finished trial

    def __post_init__(self) -> None:
        self.status = TrialStatus(self.status)  # sweep.json holds the plain value


class SweepMonitor:
    """Driver-side state of one sweep: trial rows, failures, MLflow child statuses, persisted to sweep.json."""

    def __init__(self, job, sweep_dir: str, tracker, console, reporter=None):
        self.job, self.sweep, self.sweep_dir = job, job.spec.sweep, sweep_dir
        self.tracker, self.console, self.reporter = tracker, console, reporter
        self.rows: dict[str, TrialRow] = {}
        self.state_file = os.path.join(sweep_dir, "sweep.json")
        self.journal = Journal(sweep_dir)
        self.dirty = False
        self.stop_reason: str | None = None
        self.retired: list[tuple[float, str]] = []  # (when, placement group id) of stopped trials
        self.check_cleaners_until = 0.0  # look for orphaned PlacementGroupCleaners until then (reap)
        self.cleaners_checked = 0.0

    # -- persisted state (a rerun resumes the table, the failure count and the parent run) -------------
    def load(self, resuming: bool) -> dict:
        """sweep.json and the journal of finished trials (ahead of sweep.json and Tune's state) when resuming;
        a new sweep starts with neither."""
        if not resuming:
            self.journal.clear()
            return {}
        state: dict = {}
        if os.path.exists(self.state_file):
            with open(self.state_file) as f:
                state = json.load(f)
        self.rows = {r["trial_id"]: TrialRow(**r) for r in state.get("trials", [])}
        self.rows.update({r["trial_id"]: TrialRow(**r) for r in self.journal.read()})
        for row in self.rows.values():
            if not row.status.is_terminal and row.status != TrialStatus.PAUSED:
                row.status = TrialStatus.PENDING  # interrupted: Tune resumes it
        return state

    def finished(self) -> dict[str, dict]:
        """Trials that ended before the driver died: {trial_id: the row as saved} (a rerun replays them)."""
        return {t: _plain(r) for t, r in self.rows.items() if r.status.is_terminal}

    def flush(self) -> None:
        """Save sweep.json if a trial paused, completed or failed in this Tune step.

        Called at the end of each step, after Tune's experiment checkpoint. Tune saves that checkpoint only
        every period (adaptive, at least 10 s), so its state can show a trial as running that had finished:
        a resumed sweep then starts that trial again. The journal closes that window: each finished trial is
        recorded there at once (on_complete, on_error), and the rerun replays the recorded result
        (trial.py) instead of training again.
        """
        if self.dirty:
            self.dirty = False
            self.save()

    def save(self) -> None:
        state = {
            "parent_run_id": self.tracker.run_id,
            "tracking_uri": self.tracker.uri,
            "trials": [_plain(r) for r in self.rows.values()],
        }
        tmp = self.state_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump(state, f, default=str)
        os.replace(tmp, self.state_file)

    def report(self, final: bool = False) -> None:
        """The sweep as the TrainingJob's progress: trials finished of all, the best value so far, the parent run."""
        if self.reporter is None:
            return
        total = self.sweep.population
        done = sum(r.status.is_terminal for r in self.rows.values())
        metric, mode = self.sweep.metric, self.sweep.mode
        values = [r.metrics[metric] for r in self.rows.values() if metric in r.metrics]
        best = (min if mode == "min" else max)(values) if values else None
        self.reporter.report(
            {
                "step": done,
                "total_steps": total,
                "percent": round(100.0 * done / total, 1) if total else 0.0,
                "metrics": {metric: best} if best is not None else {},
                "mlflow_run_id": self.tracker.run_id,
                "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
            final=final,
        )

    # -- Tune events --------------------------------------------------------------------------------
    def on_start(self, trial) -> None:
        row = self._row(trial)
        if row.status.is_terminal:  # finished before the last driver died: trial.py replays it
            return
        if row.status == TrialStatus.RUNNING:  # restarted without our seeing the pause: its old run is gone
            self._retire(row)
        row.status = TrialStatus.RUNNING
        row.params = _params(trial.config)  # pbt changes a restarted trial's config
        self.console.update(self.rows)

    def on_pause(self, trial) -> None:
        """A paused trial (pbt exploit, HyperBandForBOHB rung): its run was ended; a restart runs anew."""
        row = self._row(trial)
        if row.status != TrialStatus.RUNNING:
            return
        row.status = TrialStatus.PAUSED
        self._close_child(row)
        self._retire(row)
        row.placement_group = None
        self._changed()

    def on_result(self, trial, result: dict) -> None:
        row = self._row(trial)
        if result.get("replayed"):  # a finished trial Tune ran again after a resume: its row is final
            return
        row.status = TrialStatus.RUNNING
        row.params = _params(trial.config)
        if result.get("restored_from") and result.get("run_name") not in [r["run"] for r in row.restarts]:
            row.restarts.append(_restart(result))
        row.iteration = int(result.get("training_iteration", row.iteration))
        row.step = int(result.get("step", row.step))
        row.mlflow_run_id = result.get("mlflow_run_id") or row.mlflow_run_id
        row.run_dir = result.get("run_dir") or row.run_dir
        row.placement_group = result.get("placement_group") or row.placement_group
        row.metrics = {k: float(result[k]) for k in result if k.startswith("eval_")}
        row.last_result = {k: v for k, v in result.items() if isinstance(v, int | float | str)}
        names = [o.metric for o in self.sweep.objectives()]
        row.history.append(
            {
                "time": time.time(),
                "step": row.step,
                "iteration": row.iteration,
                **{k: row.metrics[k] for k in names if k in row.metrics},
            }
        )
        self.console.update(self.rows)
        self.report()

    def on_complete(self, trial) -> None:
        row = self._row(trial)
        if not row.status.is_terminal:  # else replayed after a resume: recorded already
            finished = bool((trial.last_result or {}).get("trial_finished"))
            row.status = TrialStatus.COMPLETED if finished else TrialStatus.STOPPED_EARLY
            self._finished(row)
        self._close_child(row)

    def on_error(self, trial) -> None:
        row = self._row(trial)
        if not row.status.is_terminal:  # else replayed after a resume: recorded already
            row.status = TrialStatus.FAILED
            row.error = _error_text(trial)
            self.stop_reason = budget.stop_reason(
                [r.status for r in self.rows.values()], self.sweep.max_failed_trials
            )
            self._finished(row)
        self._close_child(row)

    @property
    def failures(self) -> int:
        return sum(r.status == TrialStatus.FAILED for r in self.rows.values())

    def _row(self, trial) -> TrialRow:
        if trial.trial_id not in self.rows:
            self.rows[trial.trial_id] = TrialRow(trial.trial_id, _params(trial.config))
        return self.rows[trial.trial_id]

    def _finished(self, row: TrialRow) -> None:
        """Record the outcome durably before anything else can happen (the journal), then redraw. Its MLflow
        run is tagged after (_close_child): a driver that dies in between leaves the run untagged, and the
        resumed sweep's replay of the trial tags it, rather than a tagged run whose trial Tune runs again."""
        row.mlflow_run_id = row.mlflow_run_id or self._find_child(row.trial_id)
        self.journal.append(_plain(row))
        self._retire(row)
        self._changed()

    def _changed(self) -> None:
        """A trial paused, completed or failed: redraw the table; sweep.json follows at the step's end (flush)."""
        self.dirty = True
        self.console.update(self.rows)
        self.report()

    # -- clean-up of what a stopped trial leaves -----------------------------------------------------------
    def _retire(self, row: TrialRow) -> None:
        if row.placement_group:
            self.retired.append((time.time(), row.placement_group))

    def reap(self, grace_s: float = 3.0) -> None:
        """Remove the Ray Train placement groups of stopped trials, once their trial actors are gone.

        Tune stops a trial by ending its actor, which ends the TorchTrainer's controller ungracefully;
        Ray Train's own PlacementGroupCleaner needs the dashboard's state API to notice, so without a
        dashboard (our local default) the workers' CPUs would stay reserved and later trials never start,
        and the cleaner itself would never exit (cleanup.end_orphaned_cleaners). Trials that train in their
        own process have neither.
        """
        from .cleanup import end_orphaned_cleaners, remove_placement_groups

        now = time.time()
        due = [pg for when, pg in self.retired if now - when >= grace_s]
        self.retired = [(when, pg) for when, pg in self.retired if now - when < grace_s]
        if due:
            remove_placement_groups(due)
            self.check_cleaners_until = now + CLEANER_WATCH_S
        # the trial's controller ends with its process, a little after Tune reports the trial's end
        if now < self.check_cleaners_until and now - self.cleaners_checked >= 1.0:
            self.cleaners_checked = now
            end_orphaned_cleaners()

    def _close_child(self, row: TrialRow) -> None:
        """Tag the trial's MLflow run with its outcome; end it when the trial's process could not (idempotent:
        a replayed trial's run is closed again)."""
        client = self.tracker.client
        if client is None:
            return
        run_id = row.mlflow_run_id or self._find_child(row.trial_id)
        row.mlflow_run_id = run_id
        if not run_id:
            return
        try:
            client.set_tag(run_id, "kubetrain.trial.status", str(row.status))
            if client.get_run(run_id).info.status == "RUNNING":  # its process was stopped or died
                client.set_terminated(run_id, _RUN_STATUS[row.status])
        except Exception:  # tracking trouble never stops the sweep
            pass

    def _find_child(self, trial_id: str) -> str | None:
        try:
            runs = self.tracker.client.search_runs(
                [self.tracker.experiment_id],
                f"tags.`mlflow.parentRunId` = '{self.tracker.run_id}' and tags.`kubetrain.trial` = '{trial_id}'",
            )
        except Exception:
            return None
        return runs[0].info.run_id if runs else None


_RUN_STATUS = {  # the MLflow run status of a trial's run that ended so
    TrialStatus.PAUSED: "KILLED",
    TrialStatus.COMPLETED: "FINISHED",
    TrialStatus.STOPPED_EARLY: "KILLED",
    TrialStatus.FAILED: "FAILED",
}


def _restart(result: dict) -> dict:
    """A restart of a trial from a checkpoint (pbt exploit, a paused trial continued), as sweep.json keeps it."""
    return {
        "from_trial": result["restored_from"],
        "checkpoint": result.get("init_checkpoint", ""),
        "step": int(result.get("start_step", 0)),
        "run": result.get("run_name", ""),
        "iteration": int(result.get("training_iteration", 0)),
    }


def _plain(row: TrialRow) -> dict:
    return {**row.__dict__, "status": str(row.status)}


def _params(config: dict) -> dict:
    return {k: space._plain(v) for k, v in config.items()}


def _error_text(trial) -> str:
    """The trial's own error line (a RuntimeError raised by trial.py), else the last line Tune recorded."""
    path = getattr(trial, "error_file", None) or ""
    text = ""
    if path and os.path.exists(path):
        with open(path) as f:
            text = f.read()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    mine = [ln for ln in lines if ln.startswith("RuntimeError:")]
    return (mine[-1] if mine else (lines[-1] if lines else "the trial failed"))[:500]
