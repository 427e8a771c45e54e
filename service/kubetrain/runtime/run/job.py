"""Runs one TrainingJob: check inputs, resolve the model, start MLflow and Ray, launch, follow, publish, summarise."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from rich.markup import escape  # error texts carry [brackets] (gloo, Ray): never markup

from ...spec import SpecError, TrainingJob
from .. import contract as ev
from .. import storage
from ..contract import WorkerConfig
from ..train import data as data_mod
from ..train.engines import check_model
from ..train.models import ModelUnavailable, resolve_model_dir
from ..train.progress import Phases
from . import dataset_inputs, lineage
from .console import RunConsole
from .launch import Launched, import_launch, launch
from .paths import JobError, RunPaths, check_inputs, resolve_paths, run_paths
from .processes import gpu_assignment
from .progress import Progress, RunResult
from .ray_start import init_ray, running_in_cluster, verbose
from .tracking import Tracker, git_commit, learning_curve, versions


def run_job(
    job: TrainingJob,
    *,
    local_root: str = ".kubetrain",
    show: bool = True,
    parent_run_id: str | None = None,
    extra_tags: dict[str, str] | None = None,
    worker_env: dict[str, str] | None = None,
    on_event: Callable[[ev.Event], None] | None = None,
    init_checkpoint: str | None = None,
    report_status: bool = True,
    in_process: bool = False,
    launcher: str = "auto",
) -> RunResult:
    """Run the job to completion; never raises for job errors (JobError: inputs that are not there).

    on_event sees every worker event (contract.py) after it is handled, here, after one RunStarted (a sweep
    trial reports to Tune from them). report_status: patch status.progress of the TrainingJob in a cluster.
    in_process: the recipe in a thread of this process (world size 1), not a Ray Train worker group.
    launcher: how the workers start (choose_launcher): "auto", "ray" (Ray Train on the cluster's Ray or a
    local one) or "processes" (a local process group, no Ray).
    """
    clock, console = PhaseClock(), RunConsole(show)
    in_cluster = running_in_cluster()
    launcher = choose_launcher(launcher, in_cluster=in_cluster, in_process=in_process)
    check_inputs(job)
    job = resolve_paths(job)
    paths = run_paths(job, local_root)
    result = RunResult(job.name, False, paths.run_dir)
    os.makedirs(paths.run_dir, exist_ok=True)
    try:
        if launcher == "processes":
            gpu_assignment(job.spec.resources.workers, job.spec.resources.gpus_per_worker)  # enough GPUs here
        model_dir = None if in_cluster else resolve_model_dir(job.spec.model, paths.models_dir)
        check_model(job.spec, model_dir)  # what validation cannot know: the resolved model fits the strategy
    except ModelUnavailable as e:
        return _failed_to_start(result, console, str(e))
    except SpecError as e:  # a user mistake, refused before Ray, MLflow or any worker starts
        raise JobError(str(e)) from None
    clock.mark("resolve_model")

    launched, tracker = _start(
        job, paths, model_dir, result, clock, in_cluster=in_cluster, launcher=launcher, worker_env=worker_env,
        tracker_args=(parent_run_id, extra_tags), init_checkpoint=init_checkpoint,
    )  # fmt: skip
    progress = Progress(console, tracker, status_reporter() if report_status else None, result, on_event)
    if on_event:
        on_event(ev.RunStarted(paths.run_dir, paths.final_dir, tracker.run_id))
    _follow(launched, progress)
    console.stop()
    clock.record(tracker, console, progress)

    _record_outcome(result, launched, progress, _logs_hint(launcher, paths, in_cluster))
    result.seconds = time.time() - clock.started  # the driver's wall time, set-up included
    _publish(result, paths, tracker, job)
    _summarise(result, paths, tracker, progress)
    launched.close()
    console.summary(result)
    return result


def choose_launcher(requested: str, *, in_cluster: bool, in_process: bool) -> str:
    """How a run's workers start. "auto": Ray Train in a cluster and inside a Ray already up (a sweep's trial,
    a test session's Ray), else a local process group (run/processes.py): the same recipe without Ray Train's
    start-up. in_process (a sweep's one-worker trials) wins; a process group cannot run in a cluster."""
    if in_process:
        return "in_process"
    if requested == "auto":
        ray = sys.modules.get("ray")  # not imported: not initialized
        return "ray" if in_cluster or (ray is not None and ray.is_initialized()) else "processes"
    if requested not in ("ray", "processes"):  # in_process is the caller's flag, not a choice
        raise JobError(f"launcher: '{requested}' is not one of auto, ray, processes")
    if requested == "processes" and in_cluster:
        raise JobError(
            "launcher: 'processes' runs on this machine only; in a cluster the workers are Ray Train's"
        )
    return requested


def _logs_hint(launcher: str, paths: RunPaths, in_cluster: bool) -> str:
    """Where the workers' own output is when it is not on the console ('' when it is)."""
    if verbose() or in_cluster or launcher == "in_process":
        return ""
    where = paths.logs_dir if launcher == "processes" else "/tmp/ray/session_latest/logs"
    return f" (worker logs: {where}; KUBETRAIN_VERBOSE=1 shows them live)"


def _failed_to_start(result: RunResult, console: RunConsole, error: str) -> RunResult:
    result.error = error
    console.say(f"[red]error:[/red] {escape(error)}")
    return result


class PhaseClock(Phases):
    """Wall time of each driver phase up to the launch (shown with KUBETRAIN_VERBOSE=1, kept as MLflow tags).

    workers_up: from the launch to rank 0 starting its set-up (Ray Train's controller and worker processes).
    """

    def __init__(self):
        super().__init__()
        self.started = time.time()

    def record(self, tracker: Tracker, console: RunConsole, progress: Progress) -> None:
        """The driver's phases, and how long the workers took to start after the launch (to their set-up)."""
        done = dict(self.done)
        if progress.setup_started is not None:
            launched_at = self.started + sum(v for k, v in self.done.items() if k != "wait_tracking")
            done["workers_up"] = round(progress.setup_started - launched_at, 2)
        tracker.set_tags({f"driver_seconds.{k}": str(v) for k, v in done.items()})
        if verbose():
            console.say("driver start-up (s): " + ", ".join(f"{k} {v}" for k, v in done.items()))


def _start(
    job: TrainingJob,
    paths: RunPaths,
    model_dir: str | None,
    result: RunResult,
    clock: PhaseClock,
    *,
    in_cluster: bool,
    launcher: str,
    worker_env: dict[str, str] | None,
    tracker_args: tuple,
    init_checkpoint: str | None,
) -> tuple[Launched, Tracker]:
    """Ray (when the workers are Ray Train's), the workers and MLflow, with MLflow (and the launch's imports)
    off the critical path."""
    # One thread while Ray starts: what the launch imports (torch), then MLflow (its import and store take
    # seconds, and nothing needs the MLflow run before the first event is handled).
    with ThreadPoolExecutor(1, thread_name_prefix="kubetrain-driver") as background:
        imported = background.submit(import_launch, launcher)
        tracking = background.submit(_start_tracker, job, paths, *tracker_args)
        if launcher == "ray":
            init_ray(job, in_cluster, worker_env)
            clock.mark("start_ray")
        imported.result()
        clock.mark("import_launch")
        config = _worker_config(job, paths, model_dir, init_checkpoint)
        log_dir = None if verbose() else paths.logs_dir
        launched = launch(job, config, launcher=launcher, worker_env=worker_env, log_dir=log_dir)
        clock.mark("launch")
        tracker = tracking.result()
        clock.mark("wait_tracking")
    result.tracking_uri, result.mlflow_run_id = tracker.uri, tracker.run_id
    result.tracking_note = tracker.fallback
    return launched, tracker


def _start_tracker(job: TrainingJob, paths: RunPaths, parent_run_id, extra_tags) -> Tracker:
    """The run's MLflow run, opened (a fallback store when the configured one is unreachable)."""
    t0 = time.perf_counter()
    tracker = Tracker(
        job, paths.run_dir, paths.local_root, parent_run_id=parent_run_id, extra_tags=extra_tags
    )
    data = dataset_inputs.describe(job.spec.data, job.spec.training.seed)  # one pass over the data's bytes
    tracker.start(_run_tags(job, data.fingerprint))
    tracker.log_datasets(data.datasets)
    tracker.set_tags({"driver_seconds.start_tracking": str(round(time.perf_counter() - t0, 2))})
    return tracker


def _run_tags(job: TrainingJob, fingerprint: str) -> dict[str, str]:
    """Where the run came from: library versions, the data's fingerprint and the git commit."""
    tags = {f"version.{k}": v for k, v in versions().items()}
    tags["data.fingerprint"] = fingerprint
    commit, dirty = git_commit()
    if commit:
        tags.update(
            {"git.commit": commit, "git.dirty": str(dirty).lower(), "mlflow.source.git.commit": commit}
        )
    return tags


def _worker_config(
    job: TrainingJob, paths: RunPaths, model_dir: str | None, init_checkpoint: str | None
) -> WorkerConfig:
    return WorkerConfig(
        job=job.model_dump(mode="json"),
        model_dir=model_dir,
        cache_dir=data_mod.datasets_cache(paths.local_root),
        models_dir=paths.models_dir,
        final_dir=paths.final_dir,
        best_dir=paths.best_dir,
        init_checkpoint=init_checkpoint,
        publish_root=paths.publish_root,
    )


def _follow(launched: Launched, progress: Progress) -> None:
    """Apply the workers' events as they come, until the run ends (then whatever is still queued).

    An exception from a handler (a sweep trial's tune.report exits when Tune stopped the trial) ends an
    in-process recipe first, so the process is free for the next trial, then goes on to the caller.
    """
    try:
        while launched.running():
            _handle(launched, progress, launched.next_events(wait_s=0.5))
        _handle(launched, progress, launched.drain())
    except BaseException:
        launched.stop()
        raise


def _handle(launched: Launched, progress: Progress, events: list[ev.Event]) -> None:
    progress.handle(events)
    launched.handled(events)  # only then may an in-process recipe go on past an evaluation


def _record_outcome(result: RunResult, launched: Launched, progress: Progress, logs_hint: str) -> None:
    error = launched.error_text()
    result.succeeded = error is None
    result.history = progress.history
    if error is not None:
        result.error = error + logs_hint  # the workers' own logs are not on the console unless asked for
    diagnosis = progress.diagnosis.conclude()  # the workers ended normally, having stopped on a NaN
    if diagnosis is not None and error is None:
        result.succeeded, result.error = False, diagnosis


def _publish(result: RunResult, paths: RunPaths, tracker: Tracker, job: TrainingJob) -> None:
    """The final and best models into the result and MLflow (fetched first when written to remote storage)."""
    if not result.succeeded:
        return
    if paths.remote:  # written on a worker's node: fetch the published copies
        for local, leaf in ((paths.final_dir, "final"), (paths.best_dir, "best")):
            if not os.path.exists(local):
                storage.download_dir(storage.join(paths.publish_root, leaf), local)
    if os.path.exists(paths.final_dir):
        result.final_dir = paths.final_dir
        tracker.log_artifacts(paths.final_dir, "model")
    if os.path.exists(paths.best_dir):
        result.best_dir = paths.best_dir
        tracker.log_artifacts(paths.best_dir, "best_model")
    models = lineage.model_records(job, paths, tracker.evaluations, result.steps)
    tracker.record_models(models, _registration(job, tracker))


def _registration(job: TrainingJob, tracker: Tracker) -> lineage.Registration | None:
    """tracking.register_model, for a run of its own (a sweep's trials register nothing: which trial
    would win is not known yet, and each would move the alias)."""
    t = job.spec.tracking
    if not t.register_model or tracker.parent_run_id:
        return None
    return lineage.Registration(t.register_model, t.register_alias)


def _summarise(result: RunResult, paths: RunPaths, tracker: Tracker, progress: Progress) -> None:
    """The learning curve, final metrics and outcome into MLflow; the final status into Kubernetes."""
    curve = learning_curve(progress.history, os.path.join(paths.run_dir, "learning_curve.png"))
    if curve:
        tracker.log_artifact(curve)
    summary = {f"final_{k}": v for k, v in result.after.items()}
    if summary:
        tracker.log_metrics(summary, result.steps)
    tracker.set_tags({"kubetrain.stopped_early": str(result.stopped_early).lower()})
    tracker.set_tags(progress.diagnosis.tags())  # kubetrain.health, the diagnosis, kubetrain.warning.*
    tracker.end("FINISHED" if result.succeeded else "FAILED")
    result.mlflow_hint = tracker.ui_hint()
    if progress.reporter:
        progress.reporter.report(progress.snapshot(final=True), final=True)


def status_reporter():
    """The TrainingJob status reporter inside a cluster (None elsewhere)."""
    try:
        from .status_reporter import KubeStatusReporter
    except ImportError:
        return None
    return KubeStatusReporter.from_env()
