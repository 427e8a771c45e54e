"""Runs a sweep TrainingJob on Ray Tune: trials nested in one MLflow parent run, resumable, summarised at the end.

Driver-side bookkeeping (live table, MLflow child status, failure budget) sits in a SweepMonitor (monitor.py);
the trials themselves are trial.py's function trainable; the best trial and the Pareto front are written by
outcome.py.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from dataclasses import dataclass

from rich.markup import escape  # error texts carry [brackets] (gloo, Ray): never markup

from ...spec import TrainingJob
from ...spec.sweep import TRIAL_DRIVER_CPUS, TRIAL_DRIVER_RESOURCE
from .. import storage
from ..run.job import status_reporter
from ..run.paths import check_inputs, resolve_paths
from ..run.ray_start import init_ray, running_in_cluster
from ..run.tracking import Tracker
from . import cleanup, outcome, space
from .callbacks import MONITORS, FailureBudget, Forward
from .monitor import SweepMonitor
from .outcome import SweepResult
from .report import SweepConsole
from .trial import TrialSetup, run_trial

__all__ = ["SweepResult", "run_sweep"]


@dataclass(frozen=True)
class Placement:
    """How each trial runs and what it asks Ray for."""

    in_process: bool  # the recipe in the trial's own process (one worker, a local Ray), else a Ray Train run
    resources: dict  # Tune's resource request for the trial's process
    cpus: float  # CPUs one trial occupies in all (its process and its workers)


def run_sweep(
    job: TrainingJob,
    *,
    local_root: str = ".kubetrain",
    show: bool = True,
    worker_env: dict[str, str] | None = None,
) -> SweepResult:
    """Run (or resume) the sweep; never raises for trial failures (they are in the result)."""
    from ray import tune

    started = time.time()
    local_root = os.path.abspath(local_root)
    check_inputs(job)
    job = resolve_paths(job)
    sweep = job.spec.sweep
    sweep_root, sweep_dir = _locations(job, local_root)
    exp_dir = storage.join(sweep_root, "tune")
    result = SweepResult(job.name, False, sweep_dir)

    console = SweepConsole(show, job.name, [o.metric for o in sweep.objectives()], list(sweep.parameters))
    tracker = Tracker(job, sweep_dir, local_root)
    monitor = SweepMonitor(job, sweep_dir, tracker, console, status_reporter())
    resuming = job.spec.checkpoint.resume and tune.Tuner.can_restore(exp_dir)
    state = monitor.load(resuming)
    outcome.open_parent(tracker, state.get("parent_run_id"))
    monitor.save()  # the parent run, for a driver that resumes this one however soon it dies
    result.parent_run_id, result.tracking_uri = tracker.run_id, tracker.uri

    init_ray(job, running_in_cluster(), worker_env)
    placement = _placement(job)
    concurrency, problem = _concurrency(job, placement)
    if problem:
        result.error = problem
        console.say(f"[red]error:[/red] {escape(problem)}")
        tracker.end("FAILED")
        return result
    setup = TrialSetup(
        base=job.model_dump(mode="json", exclude_none=True, exclude={"status"}),
        sweep_name=job.name,
        trials_root=storage.join(sweep_root, "trials"),
        experiment=job.spec.tracking.experiment or job.name,
        local_root=local_root,
        parent_run_id=tracker.run_id,
        worker_env=worker_env,
        exchange=sweep.exchanges_checkpoints,
        keep_last=space.trial_keep_last(job),
        in_process=placement.in_process,
        finished=monitor.finished(),
    )
    trainable = tune.with_resources(tune.with_parameters(run_trial, setup=setup), placement.resources)
    result.resumed = resuming
    result.error = _fit(job, trainable, exp_dir, placement, concurrency, monitor, resuming)
    monitor.save()
    monitor.report(final=True)
    return outcome.finish(job, monitor, result, started)


def _locations(job: TrainingJob, local_root: str) -> tuple[str, str]:
    """Where Tune's state and the trials' runs live: the job's storage (shared by every node in a cluster);
    and the sweep's own files (sweep.json, plots, the best job): beside them, or locally for a URI."""
    sweep_root = storage.join(job.spec.checkpoint.storage, job.name)
    sweep_dir = os.path.join(local_root, "runs", job.name) if storage.is_remote(sweep_root) else sweep_root
    os.makedirs(sweep_dir, exist_ok=True)
    return sweep_root, sweep_dir


def _placement(job: TrainingJob) -> Placement:
    """One worker on a local Ray trains in the trial's process; more, or a cluster, in a Ray Train run.

    In a cluster the head advertises a slot per concurrent trial (render/rayjob.py): trial drivers go there.
    """
    import ray

    res = job.spec.resources
    if res.workers == 1 and job.spec.strategy.type == "ddp" and not running_in_cluster():
        gpus = {"gpu": res.gpus_per_worker} if res.gpus_per_worker else {}
        return Placement(True, {"cpu": res.cpus_per_worker, **gpus}, res.cpus_per_worker)
    slot = {TRIAL_DRIVER_RESOURCE: 1} if ray.cluster_resources().get(TRIAL_DRIVER_RESOURCE) else {}
    per_trial = TRIAL_DRIVER_CPUS + res.workers * res.cpus_per_worker
    return Placement(False, {"cpu": TRIAL_DRIVER_CPUS, **slot}, per_trial)


def _concurrency(job: TrainingJob, placement: Placement) -> tuple[int, str | None]:
    """Trials that fit at once on the Ray cluster's CPUs, or why the sweep cannot run at all."""
    import ray

    sweep, per_trial = job.spec.sweep, placement.cpus
    cpus = ray.cluster_resources().get("CPU", 1.0)
    if per_trial > cpus:
        extra = "" if placement.in_process else f" + {TRIAL_DRIVER_CPUS} for the trial driver"
        return 0, (
            f"one trial needs {per_trial:g} CPUs (resources.workers x cpus_per_worker{extra}) "
            f"but the Ray cluster has {cpus:g}"
        )
    concurrency = space.fitting_concurrency(sweep.max_concurrent, cpus, per_trial)
    if sweep.scheduler == "pbt" and concurrency < sweep.population:
        return concurrency, (
            f"scheduler pbt trains its {sweep.population} trials together, but the Ray cluster's {cpus:g} CPUs "
            f"fit {concurrency} (each needs {per_trial:g}): lower trials or resources.cpus_per_worker"
        )
    return concurrency, None


def _fit(job, trainable, exp_dir: str, placement: Placement, concurrency: int, monitor, resuming: bool):
    """Tune's run of the trials (a new one, or the interrupted one restored); its own error as one line."""
    from ray import tune

    sweep, console = job.spec.sweep, monitor.console
    if concurrency < sweep.max_concurrent:
        cpus = f"{placement.cpus:g}"
        console.say(f"max_concurrent lowered to {concurrency}: each trial needs {cpus} CPUs")
    key = exp_dir
    MONITORS[key] = monitor
    try:
        if resuming:
            console.say(f"Resuming sweep {job.name} from {exp_dir}")
            tuner = tune.Tuner.restore(
                exp_dir, trainable=trainable, resume_unfinished=True, resume_errored=False
            )
        else:
            tuner = _new_tuner(job, trainable, placement, concurrency, key)
        console.start()
        with _quiet_tune():
            tuner.fit()
        return None
    except Exception as e:  # Tune's own errors (not trial failures) end the sweep with a message
        return f"{type(e).__name__}: {e}".splitlines()[0]
    finally:
        console.stop()
        monitor.reap(grace_s=0.0)
        if not placement.in_process:
            cleanup.end_cleaners_at_exit()
        MONITORS.pop(key, None)


def _new_tuner(job: TrainingJob, trainable, placement: Placement, concurrency: int, key: str):
    from ray import tune

    sweep = job.spec.sweep
    single = len(sweep.objectives()) == 1
    spec = job.model_dump(mode="json", exclude_none=True, exclude={"status"})["spec"]
    return tune.Tuner(
        trainable,
        param_space=space.search_space(sweep, spec),
        tune_config=tune.TuneConfig(
            metric=sweep.metric if single else None,
            mode=sweep.mode if single else None,
            search_alg=space.searcher(sweep, concurrency),
            scheduler=space.scheduler(sweep, space.max_evaluations(job)),
            num_samples=sweep.num_trials,
            time_budget_s=sweep.time_budget_s,
            # A trial in its own process ends at the report where Tune stops it (trial.py), so its process is
            # reused by the next trial. A Ray Train trial's controller would outlive that: Tune ends its process.
            reuse_actors=placement.in_process,
        ),
        run_config=tune.RunConfig(
            name="tune",
            storage_path=os.path.dirname(key),
            callbacks=[Forward(key)],
            stop=FailureBudget(key),
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
        ),
    )


@contextlib.contextmanager
def _quiet_tune():
    """Our table replaces Tune's console output (its new output engine prints even at verbose=0)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    old = os.environ.get("RAY_AIR_NEW_OUTPUT")
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    try:
        with (
            warnings.catch_warnings()
        ):  # advice we cannot take for Ray Train trials (reuse_actors: _new_tuner)
            warnings.filterwarnings("ignore", message="Consider boosting PBT performance")
            yield
    finally:
        if old is None:
            os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = old
