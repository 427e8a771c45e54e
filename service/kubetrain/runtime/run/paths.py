"""Where a run's inputs and outputs are: spec paths made absolute, the run directory, inputs checked up front."""

from __future__ import annotations

import os
from dataclasses import dataclass

from ...spec import TrainingJob
from .. import storage
from ..train import data as data_mod
from ..train import init_from


class JobError(RuntimeError):
    """A problem with the job's inputs found before training starts; the message names the field."""


@dataclass(frozen=True)
class RunPaths:
    """The directories of one run: its own (checkpoints, metrics), the published models, a remote mirror."""

    local_root: str  # this process's own state: the model and datasets caches, the default MLflow store
    run_dir: str
    final_dir: str
    best_dir: str
    models_dir: str  # the model cache (under the local root)
    publish_root: str | None  # remote storage: final/ and best/ are mirrored under it

    @property
    def remote(self) -> bool:
        return self.publish_root is not None

    @property
    def logs_dir(self) -> str:
        """Where a local process group's workers write their output (worker-<rank>.log)."""
        return os.path.join(self.run_dir, "logs")


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
    ref = job.spec.model.init_from  # a relative path, made absolute (a job name resolves under the storage)
    model = (
        job.spec.model.model_copy(update={"init_from": init_from.location(ref, root)})
        if ref
        else job.spec.model
    )
    spec = job.spec.model_copy(
        update={
            "data": data,
            "model": model,
            "checkpoint": job.spec.checkpoint.model_copy(update={"storage": root}),
        }
    )
    return job.model_copy(update={"spec": spec})


def check_inputs(job: TrainingJob) -> None:
    """Raise JobError for a data file that is not there or a data source that cannot be read."""
    for key in ("train", "validation"):
        value = getattr(job.spec.data, key)
        if value and "://" not in value and not os.path.exists(value):
            raise JobError(f"spec.data.{key}: '{value}' does not exist (relative to {os.getcwd()})")
    try:
        data_mod.check_source(job.spec.data)
        init_from.check(job.spec.model, job.spec.checkpoint.storage)
    except (data_mod.DataError, init_from.InitFromError) as e:
        raise JobError(str(e)) from None


def run_paths(job: TrainingJob, local_root: str) -> RunPaths:
    """The run's directories for a job with resolved paths; remote storage keeps a local copy under local_root."""
    local_root = os.path.abspath(local_root)
    storage_root = job.spec.checkpoint.storage
    remote = storage.is_remote(storage_root)
    run_dir = os.path.join(local_root, "runs", job.name) if remote else os.path.join(storage_root, job.name)
    return RunPaths(
        local_root=local_root,
        run_dir=run_dir,
        final_dir=os.path.join(run_dir, "final"),
        best_dir=os.path.join(run_dir, "best"),
        models_dir=os.path.join(local_root, "models"),
        # the models also go to remote storage, since the driver's disk is not the workers' in a cluster
        publish_root=storage.join(storage_root, job.name) if remote else None,
    )
