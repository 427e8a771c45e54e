"""Runs one TrainingJob on Ray Train: resolve paths and model, start MLflow, fit, stream progress, summarise."""

from __future__ import annotations

import logging
import os
import queue as stdqueue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from rich.markup import escape  # error texts carry [brackets] (gloo, Ray): never markup

from ..spec import TrainingJob
from . import data as data_mod
from . import storage
from .console import RunConsole
from .models import ModelUnavailable, resolve_model_dir
from .tracking import Tracker, git_commit, learning_curve, versions

log = logging.getLogger(__name__)

QUIET_ENV = {
    "TOKENIZERS_PARALLELISM": "false",
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "PYTHONWARNINGS": "ignore",
    "RAY_TRAIN_ENABLE_STATE_TRACKING": "0",
}
HEALTH_CHECK_ENV, LOCAL_HEALTH_CHECK_S = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5"


@dataclass
class RunResult:
    """What a finished (or failed) run produced; the summary and the tests read this."""

    job_name: str
    succeeded: bool
    run_dir: str
    final_dir: str | None = None
    best_dir: str | None = None
    error: str | None = None
    steps: int = 0
    seconds: float = 0.0
    before: dict = field(default_factory=dict)
    after: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    samples_after: list = field(default_factory=list)
    resumed_from_step: int | None = None
    stopped_early: bool = False
    validation_examples: int = 0
    mlflow_run_id: str | None = None
    tracking_uri: str | None = None
    mlflow_hint: str = ""
    tracking_note: str | None = None
    memory: list[dict] = field(default_factory=list)  # per rank: param_bytes, grad_bytes, optimizer_bytes


class JobError(RuntimeError):
    """A problem with the job's inputs found before training starts; the message names the field."""


def local_path(path: str) -> str:
    """Absolute local path for a spec path: plain paths, and pvc://claim/sub under KUBETRAIN_PVC_ROOT."""
    if path.startswith("pvc://"):
        return os.path.join(os.environ.get("KUBETRAIN_PVC_ROOT", "/mnt/pvc"), path.removeprefix("pvc://"))
    return os.path.abspath(os.path.expanduser(path))


def resolve_paths(job: TrainingJob) -> TrainingJob:
    """Copy of the job with local data and storage paths made absolute (Ray workers may run elsewhere)."""
    data = job.spec.data.model_copy(
        update={
            k: local_path(v)
            for k in ("train", "validation")
            if (v := getattr(job.spec.data, k)) and "://" not in v and os.path.exists(v)
        }
    )
    root = job.spec.checkpoint.storage
    if not storage.is_remote(root):
        root = local_path(root)
    spec = job.spec.model_copy(
        update={"data": data, "checkpoint": job.spec.checkpoint.model_copy(update={"storage": root})}
    )
    return job.model_copy(update={"spec": spec})


def _check_inputs(job: TrainingJob) -> None:
    for key in ("train", "validation"):
        value = getattr(job.spec.data, key)
        if value and "://" not in value and not os.path.exists(value):
            raise JobError(f"spec.data.{key}: '{value}' does not exist (relative to {os.getcwd()})")
    try:
        data_mod.check_source(job.spec.data)
    except data_mod.DataError as e:
        raise JobError(str(e)) from None


def run_job(
    job: TrainingJob,
    *,
    local_root: str = ".kubetrain",
    show: bool = True,
    parent_run_id: str | None = None,
    extra_tags: dict[str, str] | None = None,
    worker_env: dict[str, str] | None = None,
    on_event: Callable[[dict], None] | None = None,
    init_checkpoint: str | None = None,
    report_status: bool = True,
) -> RunResult:
    """Run the job to completion on a local Ray (or the cluster in RAY_ADDRESS); never raises for job errors.

    on_event, when given, sees every worker event after it is handled, in this thread, preceded by one
    {"kind": "run", "run_dir", "mlflow_run_id", "final_dir"} event (a sweep trial reports to Tune from it).
    report_status: patch the TrainingJob's status.progress in a cluster (a sweep's trials leave it to the sweep).
    """
    started = time.time()
    local_root = os.path.abspath(local_root)
    console = RunConsole(show)
    _check_inputs(job)
    job = resolve_paths(job)
    spec = job.spec
    remote = storage.is_remote(spec.checkpoint.storage)
    run_dir = (
        os.path.join(local_root, "runs", job.name)
        if remote
        else os.path.join(spec.checkpoint.storage, job.name)
    )
    result = RunResult(job.name, False, run_dir)
    os.makedirs(run_dir, exist_ok=True)
    in_cluster = running_in_cluster()
    try:
        model_dir = None if in_cluster else resolve_model_dir(spec.model, os.path.join(local_root, "models"))
    except ModelUnavailable as e:
        result.error = str(e)
        console.say(f"[red]error:[/red] {escape(str(e))}")
        return result

    tracker = Tracker(job, run_dir, local_root, parent_run_id=parent_run_id, extra_tags=extra_tags)
    commit, dirty = git_commit()
    tags = {f"version.{k}": v for k, v in versions().items()}
    tags["data.fingerprint"] = data_mod.fingerprint(spec.data)
    if commit:
        tags.update(
            {"git.commit": commit, "git.dirty": str(dirty).lower(), "mlflow.source.git.commit": commit}
        )
    tracker.start(tags)
    result.tracking_uri, result.mlflow_run_id, result.tracking_note = (
        tracker.uri,
        tracker.run_id,
        tracker.fallback,
    )
    reporter = status_reporter() if report_status else None

    import ray
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.util.queue import Queue

    _init_ray(job, in_cluster, worker_env)
    events = Queue(actor_options={"num_cpus": 0})
    final_dir, best_dir = os.path.join(run_dir, "final"), os.path.join(run_dir, "best")
    config = {
        "job": job.model_dump(mode="json"),
        "queue": events,
        "model_dir": model_dir,
        "cache_dir": data_mod.datasets_cache(local_root),
        "models_dir": os.path.join(local_root, "models"),
        "final_dir": final_dir,
        "best_dir": best_dir,
        "init_checkpoint": init_checkpoint,
        # remote storage: the models also go there, since the driver's disk is not the workers' in a cluster
        "publish_root": storage.join(spec.checkpoint.storage, job.name) if remote else None,
    }
    from .loop import train_loop_per_worker

    res = spec.resources
    backend = getattr(spec.strategy, "backend", "auto")
    if backend == "auto":
        backend = "nccl" if res.gpus_per_worker else "gloo"
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config,
        torch_config=TorchConfig(backend=backend),
        scaling_config=ray.train.ScalingConfig(
            num_workers=res.workers,
            use_gpu=res.gpus_per_worker > 0,
            resources_per_worker={
                "CPU": res.cpus_per_worker,
                **({"GPU": res.gpus_per_worker} if res.gpus_per_worker else {}),
            },
        ),
        run_config=ray.train.RunConfig(
            name=job.name,
            storage_path=spec.checkpoint.storage,
            failure_config=ray.train.FailureConfig(max_failures=spec.lifecycle.max_worker_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=spec.checkpoint.keep_last),
            worker_runtime_env={"env_vars": {**QUIET_ENV, **_forwarded_env(spec), **(worker_env or {})}},
        ),
    )
    outcome: dict = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as e:  # reported below, in the driver's thread
            outcome["error"] = e

    thread = threading.Thread(target=fit, name="kubetrain-fit", daemon=True)
    thread.start()
    progress = _Progress(console, tracker, reporter, result)
    progress.on_event = on_event
    if on_event:
        on_event({"kind": "run", "run_dir": run_dir, "mlflow_run_id": tracker.run_id, "final_dir": final_dir})
    while thread.is_alive():
        thread.join(0.5)
        progress.handle(_drain(events))
    progress.handle(_drain(events))
    console.stop()

    error = outcome.get("error")
    result.succeeded = error is None
    if error is not None:
        result.error = _short_error(error)
        if not _verbose() and not in_cluster:
            result.error += (
                " (worker logs: /tmp/ray/session_latest/logs; KUBETRAIN_VERBOSE=1 shows them live)"
            )
    result.seconds = time.time() - started
    result.history = progress.history
    if remote and result.succeeded:  # written on a worker's node: fetch the published copies
        for local, leaf in ((final_dir, "final"), (best_dir, "best")):
            if not os.path.exists(local):
                storage.download_dir(storage.join(config["publish_root"], leaf), local)
    if os.path.exists(final_dir) and result.succeeded:
        result.final_dir = final_dir
        tracker.log_artifacts(final_dir, "model")
        if spec.tracking.register_model:
            tracker.register_model(spec.tracking.register_model)
    if os.path.exists(best_dir) and result.succeeded:
        result.best_dir = best_dir
        tracker.log_artifacts(best_dir, "best_model")
    curve = learning_curve(progress.history, os.path.join(run_dir, "learning_curve.png"))
    if curve:
        tracker.log_artifact(curve)
    summary = {f"final_{k}": v for k, v in result.after.items()}
    if summary:
        tracker.log_metrics(summary, result.steps)
    tracker.set_tags({"kubetrain.stopped_early": str(result.stopped_early).lower()})
    tracker.end("FINISHED" if result.succeeded else "FAILED")
    result.mlflow_hint = tracker.ui_hint()
    if reporter:
        reporter.report(progress.snapshot(final=True), final=True)
    try:
        ray.kill(events.actor)
    except Exception:
        pass
    console.summary(result)
    return result


class _Progress:
    """Applies worker events to the console, MLflow, the Kubernetes status and the result."""

    def __init__(self, console: RunConsole, tracker: Tracker, reporter, result: RunResult):
        self.console, self.tracker, self.reporter, self.result = console, tracker, reporter, result
        self.history: list[dict] = []
        self.total = 0
        self.first_step_time: float | None = None
        self.first_step = 0
        self.latest: dict = {}
        self.on_event: Callable[[dict], None] | None = None

    def handle(self, events: list[dict]) -> None:
        for ev in events:
            getattr(self, "on_" + ev["kind"], lambda e: None)(ev)
            if self.on_event:
                self.on_event(ev)
        if events and self.reporter:
            self.reporter.report(self.snapshot())

    def on_model(self, ev: dict) -> None:
        pct = 100 * ev["trainable"] / max(ev["total"], 1)
        self.console.say(
            f"{ev['model_class']}: {ev['trainable']:,} trainable of {ev['total']:,} parameters ({pct:.2f}%)"
        )
        self.tracker.set_tags(
            {"model.trainable_parameters": str(ev["trainable"]), "model.total_parameters": str(ev["total"])}
        )

    def on_memory(self, ev: dict) -> None:
        """Per-rank bytes of parameters, gradients and optimizer state: MLflow tags and the result."""
        self.result.memory = ev["ranks"]
        self.tracker.set_tags(
            {f"memory.rank{r}.{k}": str(v) for r, m in enumerate(ev["ranks"]) for k, v in m.items()}
        )
        mib = [
            f"{(m['param_bytes'] + m['grad_bytes'] + m['optimizer_bytes']) / 2**20:.1f}" for m in ev["ranks"]
        ]
        self.console.say(
            f"{ev['strategy']}: per-rank parameters+gradients+optimizer state (MiB): {', '.join(mib)}"
        )

    def on_resumed(self, ev: dict) -> None:
        self.result.resumed_from_step = ev["step"]
        self.console.say(f"Resuming from the checkpoint at step {ev['step']} ({ev['path']})")

    def on_start(self, ev: dict) -> None:
        self.total = ev["total_steps"]
        self.result.validation_examples = ev.get("validation_examples", 0)
        self.first_step = ev["step"]
        self.console.say(
            f"Training {self.total} steps on {ev['world_size']} workers, global batch {ev['global_batch']}"
        )
        setup = ev.get("setup_seconds") or {}
        self.tracker.set_tags({f"setup_seconds.{k}": str(v) for k, v in setup.items()})
        if _verbose():
            self.console.say("worker set-up (s): " + ", ".join(f"{k} {v}" for k, v in setup.items()))
        self.console.start(self.total, ev["step"])

    def on_step(self, ev: dict) -> None:
        step, metrics = ev["step"], ev["metrics"]
        if self.first_step_time is None:
            self.first_step_time, self.first_step = ev["time"], step
        self.result.steps = step
        self.latest.update({k: v for k, v in metrics.items() if not k.startswith("system/")})
        self.history.append({"step": step, "time": ev["time"], **metrics})
        self.tracker.log_metrics(metrics, step)
        self.console.step(step, metrics, self.eta(step, ev["time"]))

    def on_eval(self, ev: dict) -> None:
        metrics, step = ev["metrics"], ev["step"]
        if not metrics:
            return
        if ev["tag"] == "before":
            self.result.before.update(metrics)
        else:
            self.result.after.update(metrics)
        self.latest.update(metrics)
        self.history.append({"step": step, **metrics})
        self.tracker.log_metrics(metrics, step)
        if ev["tag"] == "periodic":
            shown = ", ".join(f"{k.removeprefix('eval_')} {v:.4f}" for k, v in metrics.items())
            self.console.say(f"step {step}: {shown}")

    def on_samples(self, ev: dict) -> None:
        if ev["tag"] == "final":
            self.result.samples_after = ev["samples"]

    def on_stopped_early(self, ev: dict) -> None:
        self.result.stopped_early = True
        self.console.say(
            f"Early stopping at step {ev['step']}: best {ev['best_metric']:.4f} at step {ev['best_step']}"
        )

    def on_final(self, ev: dict) -> None:
        self.result.steps = ev["step"]

    def eta(self, step: int, now: float) -> float | None:
        if self.first_step_time is None or step <= self.first_step or not self.total:
            return None
        rate = (now - self.first_step_time) / (step - self.first_step)
        return rate * (self.total - step)

    def snapshot(self, final: bool = False) -> dict:
        step = self.result.steps
        eta = self.eta(step, time.time())
        return {
            "step": step,
            "total_steps": self.total,
            "percent": round(100.0 * step / self.total, 1) if self.total else 0.0,
            "eta_seconds": None if final or eta is None else round(eta),
            "metrics": {k: round(float(v), 6) for k, v in self.latest.items()},
            "resumed_from_step": self.result.resumed_from_step,
            "mlflow_run_id": self.tracker.run_id,
            "mlflow_url": self.tracker.ui_hint() if self.tracker.run_id else None,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }


def _drain(events) -> list[dict]:
    """Everything queued so far (never blocks)."""
    out: list[dict] = []
    try:
        while (n := events.qsize()) > 0:
            out += events.get_nowait_batch(n)
    except stdqueue.Empty:
        pass
    return out


def start_local_ray(num_cpus: int, env: dict[str, str] | None = None) -> None:
    """A local Ray for training: workers at normal priority, a capped object store, quiet workers."""
    import ray

    # Ray starts workers at nice 15; here the Train workers are the workload, so they get normal priority
    # (otherwise the driver, MLflow writes or any other process preempt them).
    os.environ.setdefault("RAY_worker_niceness", "0")
    # Ray Train's controller polls its workers every 2 s by default, so a finished run took ~2 s to be
    # noticed (most of a tiny sweep trial's tear-down); a local poll is cheap. The controller takes it from
    # the environment of the process that calls fit(): this driver, and (via the job's env) Tune trials.
    local_env = {HEALTH_CHECK_ENV: os.environ.setdefault(HEALTH_CHECK_ENV, LOCAL_HEALTH_CHECK_S)}
    ray.init(
        num_cpus=num_cpus,
        include_dashboard=False,
        log_to_driver=_verbose(),
        logging_level=logging.WARNING,
        object_store_memory=256 * 2**20,
        runtime_env={"env_vars": {**QUIET_ENV, **local_env, **(env or {})}},
    )


def running_in_cluster() -> bool:
    """In a RayJob (KubeRay sets RAY_ADDRESS for the entrypoint; the pod carries the job's namespace)."""
    return bool(os.environ.get("RAY_ADDRESS") or os.environ.get("KUBETRAIN_JOB_NAMESPACE"))


def _init_ray(job: TrainingJob, in_cluster: bool, worker_env: dict | None) -> None:
    import ray

    if ray.is_initialized():
        return
    if in_cluster:  # a RayJob's logs are the pod logs
        ray.init(runtime_env={"env_vars": {**QUIET_ENV, **(worker_env or {})}}, log_to_driver=True)
        return
    need = job.spec.resources.workers * job.spec.resources.cpus_per_worker
    start_local_ray(max(os.cpu_count() or 2, int(need + 0.999)), worker_env)


def _verbose() -> bool:
    """Worker and Ray Train logs on the console only when asked (KUBETRAIN_VERBOSE=1); errors always surface."""
    return os.environ.get("KUBETRAIN_VERBOSE", "") not in ("", "0", "false")


def _forwarded_env(spec) -> dict[str, str]:
    """spec.env plain values, plus secret references resolved from this process's environment (local runs)."""
    out = {}
    for var in spec.env:
        if var.value is not None:
            out[var.name] = var.value
        elif var.name in os.environ:
            out[var.name] = os.environ[var.name]
    for k, v in os.environ.items():
        if k.startswith("KUBETRAIN_FAULT_"):
            out[k] = v
    return out


def status_reporter():
    try:
        from .status_reporter import KubeStatusReporter
    except ImportError:
        return None
    return KubeStatusReporter.from_env()


def _short_error(error: BaseException) -> str:
    """The root cause in one line: Ray wraps worker exceptions several times."""
    text = str(error)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.startswith(
            (
                "ValueError",
                "RuntimeError",
                "DataError",
                "KeyError",
                "TypeError",
                "ModelUnavailable",
                "FileNotFoundError",
            )
        ):
            return ln
    return lines[-1] if lines else type(error).__name__
