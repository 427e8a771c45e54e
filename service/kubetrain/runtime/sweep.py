"""Runs a sweep TrainingJob on Ray Tune: each trial a full Ray Train run of the job, nested in MLflow, resumable.

Ray 2.60 pattern: a Tune function trainable (0.1 CPU) calls `run_job` for its trial, which launches its own
TorchTrainer; every periodic evaluation becomes one `tune.report`, so schedulers count time in evaluations.
Driver-side bookkeeping (live table, MLflow child status, failure budget) sits in a `SweepMonitor`; Tune
pickles its callbacks with the experiment, so those only carry a key to the monitor of this process.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field

import yaml
from ray.tune import Callback
from ray.tune.stopper import Stopper
from rich.markup import escape  # error texts carry [brackets] (gloo, Ray): never markup

from ..spec import TrainingJob
from ..spec.sweep import TRIAL_DRIVER_CPUS, TRIAL_DRIVER_RESOURCE
from . import storage
from . import sweep_space as space
from .driver import _check_inputs, _init_ray, resolve_paths, run_job, running_in_cluster, status_reporter
from .sweep_report import SweepConsole, log_plots
from .tracking import Tracker, git_commit, versions

MONITORS: dict[str, SweepMonitor] = {}
EXCHANGE_FILE = "kubetrain_trial.json"  # the whole Tune checkpoint: which Ray Train checkpoint to start from
CHECKPOINT_WAIT_S = 120.0


@dataclass
class TrialRow:
    """One trial as the table, MLflow and the result see it."""

    trial_id: str
    params: dict
    status: str = "pending"  # pending | running | completed | stopped_early | failed
    iteration: int = 0
    step: int = 0
    metrics: dict = field(default_factory=dict)
    mlflow_run_id: str | None = None
    run_dir: str | None = None
    error: str | None = None
    history: list = field(default_factory=list)  # [{"time", "step", "iteration", metric...}]
    placement_group: str | None = None  # of the trial's Ray Train workers
    restarts: list = field(default_factory=list)  # pbt: [{"from_trial", "checkpoint", "step", "run"}]


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


class SweepMonitor:
    """Driver-side state of one sweep: trial rows, failures, MLflow child statuses, persisted to sweep.json."""

    def __init__(self, job: TrainingJob, sweep_dir: str, tracker: Tracker, console: SweepConsole):
        self.job, self.sweep, self.sweep_dir = job, job.spec.sweep, sweep_dir
        self.tracker, self.console = tracker, console
        self.rows: dict[str, TrialRow] = {}
        self.state_file = os.path.join(sweep_dir, "sweep.json")
        self.dirty = False
        self.stop_reason: str | None = None
        self.retired: list[tuple[float, str]] = []  # (when, placement group id) of stopped trials
        self.reporter = status_reporter()  # in a cluster: the TrainingJob's status.progress

    # -- persisted state (a rerun resumes the table, the failure count and the parent run) -------------
    def load(self) -> dict:
        if not os.path.exists(self.state_file):
            return {}
        with open(self.state_file) as f:
            state = json.load(f)
        self.rows = {r["trial_id"]: TrialRow(**r) for r in state.get("trials", [])}
        for row in self.rows.values():
            if row.status in ("running", "pending"):
                row.status = "pending"  # interrupted: Tune resumes it
        return state

    def flush(self) -> None:
        """Save sweep.json if a trial paused, completed or failed in this Tune step.

        Called at the end of each step, after Tune's experiment checkpoint: when Tune checkpoints every step
        (TUNE_GLOBAL_CHECKPOINT_S=0), sweep.json does not show a trial as finished before Tune's state (what
        a resumed sweep restores) does, up to Tune's background copy to storage. With Tune's default period
        (adaptive, at least 10 s) it can still be ahead by one period: a trial finished in that window runs
        again on resume.
        """
        if self.dirty:
            self.dirty = False
            self.save()

    def _changed(self) -> None:
        """A trial paused, completed or failed: redraw the table; sweep.json follows at the step's end (flush)."""
        self.dirty = True
        self.console.update(self.rows)
        self.report()

    def report(self, final: bool = False) -> None:
        """The sweep as the TrainingJob's progress: trials finished of all, the best value so far, the parent run."""
        if self.reporter is None:
            return
        total = self.sweep.population
        done = sum(r.status in ("completed", "stopped_early", "failed") for r in self.rows.values())
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

    def save(self) -> None:
        state = {
            "parent_run_id": self.tracker.run_id,
            "tracking_uri": self.tracker.uri,
            "trials": [r.__dict__ for r in self.rows.values()],
        }
        tmp = self.state_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump(state, f, default=str)
        os.replace(tmp, self.state_file)

    @property
    def failures(self) -> int:
        return sum(r.status == "failed" for r in self.rows.values())

    # -- Tune events --------------------------------------------------------------------------------
    def _row(self, trial) -> TrialRow:
        if trial.trial_id not in self.rows:
            self.rows[trial.trial_id] = TrialRow(trial.trial_id, _params(trial.config))
        return self.rows[trial.trial_id]

    def on_start(self, trial) -> None:
        row = self._row(trial)
        if row.status == "running":  # restarted without our seeing the pause: its old run is gone
            self._retire(row)
        row.status = "running"
        row.params = _params(trial.config)  # pbt changes a restarted trial's config
        self.console.update(self.rows)

    def on_pause(self, trial) -> None:
        """A paused trial (pbt exploit, HyperBandForBOHB rung): its run was ended; a restart runs anew."""
        row = self._row(trial)
        if row.status != "running":
            return
        row.status = "paused"
        self._close_child(row, "KILLED")
        self._retire(row)
        row.placement_group = None
        self._changed()

    def on_result(self, trial, result: dict) -> None:
        row = self._row(trial)
        row.status = "running"
        row.params = _params(trial.config)
        if result.get("restored_from") and result.get("run_name") not in [r["run"] for r in row.restarts]:
            row.restarts.append(
                {
                    "from_trial": result["restored_from"],
                    "checkpoint": result.get("init_checkpoint", ""),
                    "step": int(result.get("start_step", 0)),
                    "run": result.get("run_name", ""),
                    "iteration": int(result.get("training_iteration", 0)),
                }
            )
        row.iteration = int(result.get("training_iteration", row.iteration))
        row.step = int(result.get("step", row.step))
        row.mlflow_run_id = result.get("mlflow_run_id") or row.mlflow_run_id
        row.run_dir = result.get("run_dir") or row.run_dir
        row.placement_group = result.get("placement_group") or row.placement_group
        names = [o.metric for o in self.sweep.objectives()]
        row.metrics = {k: float(result[k]) for k in result if k.startswith("eval_")}
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
        finished = bool((trial.last_result or {}).get("trial_finished"))
        row.status = "completed" if finished else "stopped_early"
        self._close_child(row, "FINISHED" if finished else "KILLED")
        self._retire(row)
        self._changed()

    def on_error(self, trial) -> None:
        row = self._row(trial)
        row.status = "failed"
        row.error = _error_text(trial)
        self._close_child(row, "FAILED")
        self._retire(row)
        if self.failures > self.sweep.max_failed_trials:
            self.stop_reason = (
                f"{self.failures} trials failed (max_failed_trials: {self.sweep.max_failed_trials})"
            )
        self._changed()

    def _retire(self, row: TrialRow) -> None:
        if row.placement_group:
            self.retired.append((time.time(), row.placement_group))

    def reap(self, grace_s: float = 3.0) -> None:
        """Remove the Ray Train placement groups of stopped trials, once their trial actors are gone.

        Tune stops a trial by ending its actor, which ends the TorchTrainer's controller ungracefully;
        Ray Train's own PlacementGroupCleaner needs the dashboard's state API to notice, so without a
        dashboard (our local default) the workers' CPUs would stay reserved and later trials never start.
        """
        from ray._raylet import PlacementGroupID
        from ray.util import placement_group_table
        from ray.util.placement_group import PlacementGroup, remove_placement_group

        now, keep = time.time(), []
        for when, pg_id in self.retired:
            if now - when < grace_s:
                keep.append((when, pg_id))
                continue
            try:
                pg = PlacementGroup(PlacementGroupID(bytes.fromhex(pg_id)))
                if placement_group_table(pg).get("state") not in (None, "REMOVED"):
                    remove_placement_group(pg)
            except Exception:  # already gone, or Ray is shutting down
                pass
        self.retired = keep

    def _close_child(self, row: TrialRow, status: str) -> None:
        """Tag the trial's MLflow run with its outcome; end it when the trial's process could not."""
        client = self.tracker.client
        if client is None:
            return
        run_id = row.mlflow_run_id or self._find_child(row.trial_id)
        row.mlflow_run_id = run_id
        if not run_id:
            return
        try:
            client.set_tag(run_id, "kubetrain.trial.status", row.status)
            if client.get_run(run_id).info.status == "RUNNING":  # its process was stopped or died
                client.set_terminated(run_id, status)
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


class Forward(Callback):
    """Tune callback forwarding trial events to MONITORS[key] (Tune pickles it with the experiment)."""

    def __init__(self, key: str):
        self.key = key

    def on_step_begin(self, iteration, trials, **info):  # Tune has no pause event: look for paused trials
        if m := MONITORS.get(self.key):
            for trial in trials:
                if trial.status == "PAUSED":
                    m.on_pause(trial)

    def on_trial_start(self, iteration, trials, trial, **info):
        if m := MONITORS.get(self.key):
            m.on_start(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if m := MONITORS.get(self.key):
            m.on_result(trial, result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        if m := MONITORS.get(self.key):
            m.on_complete(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        if m := MONITORS.get(self.key):
            m.on_error(trial)

    def on_step_end(self, iteration, trials, **info):  # Tune saved its experiment state just before
        if m := MONITORS.get(self.key):
            m.flush()


class FailureBudget(Stopper):
    """Ends the whole sweep once more than max_failed_trials trials have failed."""

    def __init__(self, key: str):
        self.key = key

    def __call__(self, trial_id, result):
        return False

    def stop_all(self):  # Tune asks this on every step of its loop: a good place to reap placement groups
        m = MONITORS.get(self.key)
        if m:
            m.reap()
        return bool(m and m.stop_reason)


def _trial(
    config: dict,
    *,
    base: dict,
    sweep_name: str,
    trials_root: str,
    experiment: str,
    local_root: str,
    parent_run_id: str | None,
    worker_env: dict | None,
    exchange: bool = False,
    keep_last: int | None = None,
) -> None:
    """The Tune function trainable: one Ray Train run of the job with `config` applied; reports each evaluation.

    With exchange (pbt, bohb), each report carries a small Tune checkpoint naming the Ray Train checkpoint of
    that evaluation. A trial Tune starts with a checkpoint (another trial's after a pbt exploit, with a
    perturbed config; its own after a pause) runs a new segment, '<trial>-r<n>', from that Ray Train
    checkpoint (run_job's init_checkpoint).
    """
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    name = space.trial_name(sweep_name, trial_id)
    start: dict = {}
    if exchange and (given := tune.get_checkpoint()) is not None:
        start = restart_point(given, trial_id, sweep_name, trials_root)
        name = start["run_name"]
    job = space.trial_job(
        base,
        config,
        name=name,
        storage=trials_root,
        experiment=experiment,
        parent_name=sweep_name,
        keep_last=keep_last,
    )
    info: dict = {"run_name": name}
    if start.get("restored_from"):
        info.update(restored_from=start["restored_from"], init_checkpoint=start["init_checkpoint"])
    last: list[dict] = []

    def report(metrics: dict) -> None:
        if not exchange:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory(prefix="kubetrain-tune-") as tmp:
            with open(os.path.join(tmp, EXCHANGE_FILE), "w") as f:
                json.dump(
                    {
                        "trial_id": trial_id,
                        "run_name": name,
                        "step": metrics["step"],
                        # Ray Train keeps the run's checkpoints under <storage>/<run name>
                        "train_checkpoint": train_checkpoint_dir(
                            storage.join(trials_root, name), metrics["step"]
                        ),
                    },
                    f,
                )
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))

    def on_event(ev: dict) -> None:
        if ev["kind"] == "run":
            info.update(mlflow_run_id=ev["mlflow_run_id"] or "", run_dir=ev["run_dir"])
        elif ev["kind"] == "start":
            info.update(
                total_steps=ev["total_steps"],
                start_step=ev["step"],
                placement_group=ev.get("placement_group") or "",
            )
        elif ev["kind"] == "eval" and ev.get("tag") == "periodic" and ev.get("metrics"):
            metrics = {**ev["metrics"], "step": ev["step"], **info}
            if ev["step"] >= info.get("total_steps", float("inf")):
                last.append(metrics)  # held until the run has saved its model and closed its MLflow run
            else:
                report(metrics)

    if start.get("init_checkpoint"):
        _wait_for_checkpoint(start["init_checkpoint"])
    result = run_job(
        job,
        local_root=local_root,
        show=False,
        parent_run_id=parent_run_id,
        extra_tags={
            "kubetrain.sweep": sweep_name,
            "kubetrain.trial": trial_id,
            **({"kubetrain.restored_from": start["restored_from"]} if start.get("restored_from") else {}),
        },
        worker_env=worker_env,
        on_event=on_event,
        init_checkpoint=start.get("init_checkpoint"),
        report_status=False,  # the TrainingJob's status shows the sweep (SweepMonitor.report), not one trial
    )
    if not result.succeeded:
        raise RuntimeError(result.error or "the trial's training run failed")
    if last:
        report({**last[-1], "trial_finished": 1})


def train_checkpoint_dir(run_root: str, step: int) -> str:
    """The Ray Train checkpoint a run writes at `step` (runtime/loop.py names them checkpoint_<step:08d>)."""
    return storage.join(run_root, f"checkpoint_{step:08d}")


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


def _wait_for_checkpoint(path: str, timeout_s: float = CHECKPOINT_WAIT_S) -> None:
    """The other trial reported its evaluation before its Ray Train checkpoint of that step was stored."""
    from .state import STATE

    deadline = time.monotonic() + timeout_s
    while not storage.exists(storage.join(path, STATE)):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the checkpoint to restart from, {path}, did not appear in {timeout_s:.0f} s")
        time.sleep(0.5)


def run_sweep(
    job: TrainingJob,
    *,
    local_root: str = ".kubetrain",
    show: bool = True,
    worker_env: dict[str, str] | None = None,
) -> SweepResult:
    """Run (or resume) the sweep; never raises for trial failures (they are in the result)."""
    import ray
    from ray import tune

    started = time.time()
    local_root = os.path.abspath(local_root)
    _check_inputs(job)
    job = resolve_paths(job)
    sweep = job.spec.sweep
    # Tune's state and the trials' Ray Train runs live in the job's storage (shared by every node in a
    # cluster); the sweep's own files (sweep.json, plots, the best job) beside it, or locally for a URI.
    sweep_root = storage.join(job.spec.checkpoint.storage, job.name)
    remote = storage.is_remote(sweep_root)
    sweep_dir = os.path.join(local_root, "runs", job.name) if remote else sweep_root
    os.makedirs(sweep_dir, exist_ok=True)
    exp_dir = storage.join(sweep_root, "tune")
    result = SweepResult(job.name, False, sweep_dir)

    console = SweepConsole(show, job.name, [o.metric for o in sweep.objectives()], list(sweep.parameters))
    tracker = Tracker(job, sweep_dir, local_root)
    monitor = SweepMonitor(job, sweep_dir, tracker, console)
    resuming = job.spec.checkpoint.resume and tune.Tuner.can_restore(exp_dir)
    state = monitor.load() if resuming else {}
    _open_parent(tracker, state.get("parent_run_id"))
    result.parent_run_id, result.tracking_uri = tracker.run_id, tracker.uri

    _init_ray(job, running_in_cluster(), worker_env)
    cpus = ray.cluster_resources().get("CPU", 1.0)
    # In a cluster the head advertises a slot per concurrent trial (render/rayjob.py): drivers go there.
    driver_slot = {TRIAL_DRIVER_RESOURCE: 1} if ray.cluster_resources().get(TRIAL_DRIVER_RESOURCE) else {}
    per_trial = TRIAL_DRIVER_CPUS + job.spec.resources.workers * job.spec.resources.cpus_per_worker

    def failed(msg: str) -> SweepResult:
        result.error = msg
        console.say(f"[red]error:[/red] {escape(msg)}")
        tracker.end("FAILED")
        return result

    if per_trial > cpus:
        return failed(
            f"one trial needs {per_trial:g} CPUs (resources.workers x cpus_per_worker + "
            f"{TRIAL_DRIVER_CPUS} for the trial driver) but the Ray cluster has {cpus:g}"
        )
    concurrency = space.fitting_concurrency(sweep.max_concurrent, cpus, per_trial)
    if sweep.scheduler == "pbt" and concurrency < sweep.population:
        return failed(
            f"scheduler pbt trains its {sweep.population} trials together, but the Ray cluster's {cpus:g} CPUs "
            f"fit {concurrency} (each needs {per_trial:g}): lower trials or resources.cpus_per_worker"
        )
    if concurrency < sweep.max_concurrent:
        console.say(
            f"max_concurrent lowered to {concurrency}: each trial needs {per_trial:g} of {cpus:g} CPUs"
        )

    base = job.model_dump(mode="json", exclude_none=True, exclude={"status"})
    trainable = tune.with_resources(
        tune.with_parameters(
            _trial,
            base=base,
            sweep_name=job.name,
            trials_root=storage.join(sweep_root, "trials"),
            experiment=job.spec.tracking.experiment or job.name,
            local_root=local_root,
            parent_run_id=tracker.run_id,
            worker_env=worker_env,
            exchange=sweep.exchanges_checkpoints,
            keep_last=space.trial_keep_last(job),
        ),
        {"cpu": TRIAL_DRIVER_CPUS, **driver_slot},
    )
    key = exp_dir
    MONITORS[key] = monitor
    try:
        if resuming:
            console.say(f"Resuming sweep {job.name} from {exp_dir}")
            tuner = tune.Tuner.restore(
                exp_dir, trainable=trainable, resume_unfinished=True, resume_errored=False
            )
            result.resumed = True
        else:
            objectives = sweep.objectives()
            single = len(objectives) == 1
            tuner = tune.Tuner(
                trainable,
                param_space=space.search_space(sweep, base["spec"]),
                tune_config=tune.TuneConfig(
                    metric=sweep.metric if single else None,
                    mode=sweep.mode if single else None,
                    search_alg=space.searcher(sweep, concurrency),
                    scheduler=space.scheduler(sweep, space.max_evaluations(job)),
                    num_samples=sweep.num_trials,
                    time_budget_s=sweep.time_budget_s,
                    # Not reusable: a stopped trial's function is inside run_job, not in tune.report, so Tune's
                    # reset (2 s wait for the function to return) would fail and error the next trial instead.
                    reuse_actors=False,
                ),
                run_config=tune.RunConfig(
                    name="tune",
                    storage_path=sweep_root,
                    callbacks=[Forward(key)],
                    stop=FailureBudget(key),
                    verbose=0,
                    failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
                ),
            )
        console.start()
        with _quiet_tune():
            tuner.fit()
    except Exception as e:  # Tune's own errors (not trial failures) end the sweep with a message
        result.error = f"{type(e).__name__}: {e}".splitlines()[0]
    finally:
        console.stop()
        monitor.reap(grace_s=0.0)
        MONITORS.pop(key, None)
    monitor.save()
    monitor.report(final=True)
    return _finish(job, monitor, result, started)


def _finish(job: TrainingJob, monitor: SweepMonitor, result: SweepResult, started: float) -> SweepResult:
    """Pick the best trial, write its ready-to-run job, fill the parent run, and print the summary."""
    sweep, tracker = job.spec.sweep, monitor.tracker
    result.trials = list(monitor.rows.values())
    scored = [r for r in result.trials if sweep.metric in r.metrics]
    if scored:
        best = (min if sweep.mode == "min" else max)(scored, key=lambda r: r.metrics[sweep.metric])
        result.best = best
        result.best_checkpoint = _checkpoint_of(best)
        data = space.runnable_yaml_data(
            job.model_dump(mode="json", exclude_unset=True),
            best.params,
            name=f"{job.name}-best"[:63].rstrip("-"),
        )
        result.best_job_path = os.path.join(result.sweep_dir, "best_trainingjob.yaml")
        with open(result.best_job_path, "w") as f:
            f.write(
                f"# Best trial {best.trial_id} of sweep {job.name}: {sweep.metric} "
                f"{best.metrics[sweep.metric]:.6g}\n"
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
    if sweep.second_objective is not None:
        objectives = [(o.metric, o.mode) for o in sweep.objectives()]
        front = space.pareto_front([{**r.metrics, "_row": r} for r in result.trials], objectives)
        result.pareto = [f["_row"] for f in front]
        pareto_path = os.path.join(result.sweep_dir, "pareto_front.json")
        with open(pareto_path, "w") as f:
            json.dump(
                [
                    {"trial_id": r.trial_id, "params": r.params, **{m: r.metrics[m] for m, _ in objectives}}
                    for r in result.pareto
                ],
                f,
                indent=2,
            )
        tracker.log_artifact(pareto_path)
    _close_orphans(tracker)
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


@contextlib.contextmanager
def _quiet_tune():
    """Our table replaces Tune's console output (its new output engine prints even at verbose=0)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    old = os.environ.get("RAY_AIR_NEW_OUTPUT")
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    try:
        with warnings.catch_warnings():  # advice we cannot take (reuse_actors: see run_sweep)
            warnings.filterwarnings("ignore", message="Consider boosting PBT performance")
            yield
    finally:
        if old is None:
            os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = old


def _open_parent(tracker: Tracker, run_id: str | None) -> None:
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


def _close_orphans(tracker: Tracker) -> None:
    """Child runs still RUNNING once Tune is done were left by an interrupted driver (Tune reran those trials)."""
    if tracker.client is None or not tracker.run_id:
        return
    try:
        orphans = tracker.client.search_runs(
            [tracker.experiment_id],
            f"tags.`mlflow.parentRunId` = '{tracker.run_id}' and attributes.status = 'RUNNING'",
        )
        for child in orphans:
            tracker.client.set_tag(child.info.run_id, "kubetrain.trial.status", "interrupted")
            tracker.client.set_terminated(child.info.run_id, "KILLED")
    except Exception:  # tracking trouble never fails the sweep
        pass


def _checkpoint_of(row: TrialRow) -> str | None:
    """A completed trial's final model directory, else its latest Ray Train checkpoint."""
    if not row.run_dir:
        return None
    final = os.path.join(row.run_dir, "final")
    if row.status == "completed" and os.path.isdir(final):
        return final
    ckpts = sorted(glob.glob(os.path.join(row.run_dir, "checkpoint_*")))
    return ckpts[-1] if ckpts else None


def _params(config: dict) -> dict:
    return {k: space._plain(v) for k, v in config.items()}


def _error_text(trial) -> str:
    path = getattr(trial, "error_file", None) or ""
    text = ""
    if path and os.path.exists(path):
        with open(path) as f:
            text = f.read()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    mine = [ln for ln in lines if ln.startswith("RuntimeError:")]
    return (mine[-1] if mine else (lines[-1] if lines else "the trial failed"))[:500]
