"""Starting (or joining) Ray for a run: a local Ray tuned for training, or the cluster's in a RayJob."""

from __future__ import annotations

import logging
import os

from ...spec import TrainingJob

# What every Ray worker of a run gets in its environment: quiet libraries, no Ray Train state tracking.
QUIET_ENV = {
    "TOKENIZERS_PARALLELISM": "false",
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "PYTHONWARNINGS": "ignore",
    "RAY_TRAIN_ENABLE_STATE_TRACKING": "0",
}
HEALTH_CHECK_ENV, LOCAL_HEALTH_CHECK_S = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5"


def verbose() -> bool:
    """Worker and Ray Train logs on the console only when asked (KUBETRAIN_VERBOSE=1); errors always surface."""
    return os.environ.get("KUBETRAIN_VERBOSE", "") not in ("", "0", "false")


def running_in_cluster() -> bool:
    """In a RayJob (KubeRay sets RAY_ADDRESS for the entrypoint; the pod carries the job's namespace)."""
    return bool(os.environ.get("RAY_ADDRESS") or os.environ.get("KUBETRAIN_JOB_NAMESPACE"))


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
        log_to_driver=verbose(),
        logging_level=logging.WARNING,
        object_store_memory=256 * 2**20,
        runtime_env={"env_vars": {**QUIET_ENV, **local_env, **(env or {})}},
    )


def init_ray(job: TrainingJob, in_cluster: bool, worker_env: dict | None) -> None:
    """Ray for this job unless one is up already (a sweep's, a test session's): the cluster's or a local one."""
    import ray

    if ray.is_initialized():
        return
    if in_cluster:  # a RayJob's logs are the pod logs
        ray.init(runtime_env={"env_vars": {**QUIET_ENV, **(worker_env or {})}}, log_to_driver=True)
        return
    need = job.spec.resources.workers * job.spec.resources.cpus_per_worker
    start_local_ray(max(os.cpu_count() or 2, int(need + 0.999)), worker_env)


def forwarded_env(spec) -> dict[str, str]:
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
