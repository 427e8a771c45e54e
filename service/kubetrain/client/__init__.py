"""The SDK: `TrainingClient`, one facade over swappable backends (local, kube, rest).

tc = TrainingClient()                                  # local: background runs under .kubetrain/
tc = TrainingClient(backend="kube", namespace="nlp")   # kubeconfig or in-cluster
tc = TrainingClient(backend="rest", url=..., token=...)
name = tc.submit("jobs/quickstart.yaml", set={"spec.training.learning_rate": 1e-3})
tc.wait(name); tc.logs(name); tc.metrics(name)
"""

from __future__ import annotations

import copy
import os
import pathlib
import sys
import time
from collections.abc import Iterator, Mapping
from typing import Any

from ..schema.status import Phase
from ..spec import Problem, SpecError, TrainingJob, parse_yaml, set_path, validate_job
from . import errors
from .base import Backend
from .errors import (
    AlreadyExists,
    ClientError,
    Forbidden,
    Invalid,
    JobFailed,
    NotFound,
    Unauthorized,
    Unavailable,
    WaitTimeout,
)
from .types import JobInfo

__all__ = [
    "AlreadyExists", "Backend", "ClientError", "errors", "Forbidden", "Invalid", "JobFailed", "JobInfo", "NotFound",
    "TrainingClient", "Unauthorized", "Unavailable", "WaitTimeout", "load",
]  # fmt: skip

BACKENDS = ("local", "kube", "rest")


def load(
    job: str | os.PathLike | Mapping[str, Any] | TrainingJob, set: Mapping[str, Any] | None = None
) -> TrainingJob:
    """A TrainingJob from a file path, a dict or a TrainingJob, with dotted-path overrides; errors.Invalid
    names every problem as `kubetrain validate` does (FILE:LINE: field.path: message)."""
    source, lines = "", None
    if isinstance(job, TrainingJob):
        data: Any = job.model_dump(mode="json", exclude_unset=True, exclude={"status"})
        data.setdefault("apiVersion", job.apiVersion)
        data.setdefault("kind", job.kind)
    elif isinstance(job, Mapping):
        data = copy.deepcopy(dict(job))
    else:
        source = str(job)
        try:
            text = pathlib.Path(job).read_text()
        except FileNotFoundError:
            raise Invalid([Problem("", "no such file")], source) from None
        except (OSError, UnicodeDecodeError) as e:
            raise Invalid([Problem("", f"cannot read: {e}")], source) from None
        try:
            data, lines = parse_yaml(text, source)
        except SpecError as e:
            raise Invalid(e.problems, source) from None
    try:
        for path, value in (set or {}).items():
            if not isinstance(data, dict):
                break  # validate_job reports the non-mapping document
            set_path(data, path, value)
        return validate_job(data, source, (), lines)
    except SpecError as e:
        raise Invalid(e.problems, source) from None


def make_backend(backend: str | Backend, **options: Any) -> Backend:
    if isinstance(backend, Backend):
        return backend
    if backend == "local":
        from .local import LocalBackend

        return LocalBackend(root=options.get("root") or ".kubetrain")
    if backend == "kube":
        from .kube import KubeBackend

        return KubeBackend(server=options.get("url"), token=options.get("token"))
    if backend == "rest":
        from .rest import RestBackend

        url = options.get("url") or os.environ.get("KUBETRAIN_API_URL")
        if not url:
            raise Invalid([Problem("url", "the rest backend needs url= (or $KUBETRAIN_API_URL)")])
        return RestBackend(url, token=options.get("token") or os.environ.get("KUBETRAIN_API_TOKEN"))
    raise Invalid([Problem("backend", f"got {backend!r}: expected one of {', '.join(BACKENDS)}")])


class TrainingClient:
    """Submit, watch and manage TrainingJobs the same way locally, on a cluster and over the REST API."""

    def __init__(self, backend: str | Backend = "local", namespace: str | None = None, *, url: str | None = None,
                 token: str | None = None, root: str | None = None):  # fmt: skip
        self.backend = make_backend(backend, url=url, token=token, root=root)
        self.namespace = namespace or getattr(self.backend, "default_namespace", None) or "default"
        self.root = root or ".kubetrain"

    def __enter__(self) -> TrainingClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.backend.close()

    def submit(self, job: str | os.PathLike | Mapping[str, Any] | TrainingJob, set: Mapping[str, Any] | None = None,
               name: str | None = None) -> str:  # fmt: skip
        """Create the job and return its name at once (it runs in the background)."""
        overrides = {**({"metadata.name": name} if name else {}), **(set or {})}
        return self.backend.submit(load(job, overrides), self.namespace).name

    def get(self, name: str) -> JobInfo:
        return self.backend.get(name, self.namespace)

    def list(self, labels: Mapping[str, str] | None = None) -> list[JobInfo]:
        return self.backend.list(self.namespace, dict(labels or {}))

    def delete(self, name: str) -> None:
        self.backend.delete(name, self.namespace)

    def suspend(self, name: str) -> JobInfo:
        return self.backend.set_suspended(name, self.namespace, True)

    def resume(self, name: str) -> JobInfo:
        return self.backend.set_suspended(name, self.namespace, False)

    def logs(self, name: str, follow: bool = False) -> Iterator[str]:
        return self.backend.logs(name, self.namespace, follow)

    def wait(self, name: str, until: str | Phase = Phase.SUCCEEDED, timeout: float | None = 3600,
             progress: bool = False, poll: float = 1.0) -> JobInfo:  # fmt: skip
        """Poll until the job reaches `until`; JobFailed if it ends elsewhere, WaitTimeout after `timeout` s.

        progress=True draws a live bar (step, percent, phase) when stderr is a terminal, else phase lines.
        """
        want = Phase(until).value
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = _Bar(name) if progress else None
        try:
            while True:
                info = self.get(name)
                if bar:
                    bar.update(info)
                if info.phase == want:
                    return info
                if info.finished:
                    why = f": {info.status.message}" if info.status.message else ""
                    raise JobFailed(f"trainingjob {name} ended {info.phase} (waited for {want}){why}")
                if deadline is not None and time.monotonic() > deadline:
                    raise WaitTimeout(
                        f"trainingjob {name} is {info.phase} after {timeout:g} s (waited for {want})"
                    )
                time.sleep(poll)
        finally:
            if bar:
                bar.close()

    # -- MLflow views (mlflow imported only here) ---------------------------------------------------
    def _mlflow(self, name: str) -> tuple[Any, Any, JobInfo]:
        """The MLflow client and the job's run (by status.mlflowRunId, else by experiment and run name)."""
        info = self.get(name)
        tracking = info.spec.get("tracking") or {}
        uri = tracking.get("tracking_uri") or "sqlite:///" + os.path.join(
            os.path.abspath(self.root), "mlflow.db"
        )
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        run_id = info.status.mlflowRunId or (
            info.status.progress.mlflow_run_id if info.status.progress else None
        )
        if run_id:
            return client, client.get_run(run_id), info
        experiment = client.get_experiment_by_name(tracking.get("experiment") or name)
        run_name = tracking.get("run_name") or name
        runs = [] if experiment is None else client.search_runs(
            [experiment.experiment_id], filter_string=f"attributes.run_name = '{run_name}'",
            order_by=["attributes.start_time DESC"], max_results=1,
        )  # fmt: skip
        if not runs:
            raise NotFound(f"trainingjob {name} has no MLflow run at {uri} (yet)")
        return client, runs[0], info

    def metrics(self, name: str) -> dict[str, list[tuple[int, float]]]:
        """Every metric's history of the job's MLflow run: {name: [(step, value), ...]}."""
        client, run, _ = self._mlflow(name)
        return {key: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
                for key in sorted(run.data.metrics)}  # fmt: skip

    def trials(self, name: str) -> list[dict[str, Any]]:
        """A sweep's trials: one row per MLflow child run (run name, status, params, latest metrics)."""
        client, run, _ = self._mlflow(name)
        children = client.search_runs([run.info.experiment_id],
                                      filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}'")  # fmt: skip
        return [{"run_id": c.info.run_id, "name": c.info.run_name, "status": c.info.status,
                 "params": dict(c.data.params), "metrics": dict(c.data.metrics)} for c in children]  # fmt: skip

    def best(self, name: str) -> dict[str, Any]:
        """The sweep's best trial by its metric and mode (spec.sweep)."""
        info = self.get(name)
        sweep = info.spec.get("sweep") or {}
        metric, mode = sweep.get("metric", "eval_loss"), sweep.get("mode", "min")
        scored = [t for t in self.trials(name) if metric in t["metrics"]]
        if not scored:
            raise NotFound(f"trainingjob {name} has no trial with {metric} (yet)")
        pick = min if mode == "min" else max
        return pick(scored, key=lambda t: t["metrics"][metric])


class _Bar:
    """wait(progress=True): a rich bar on a terminal, one line per phase or step change otherwise."""

    def __init__(self, name: str):
        self.name, self.last = name, ""
        self.progress = None
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(TextColumn(f"[bold]{name}"), BarColumn(), TextColumn("{task.fields[info]}"),
                                     TimeElapsedColumn(), console=Console(stderr=True))  # fmt: skip
            self.progress.start()
            self.task = self.progress.add_task(name, total=None, info="")

    def update(self, info: JobInfo) -> None:
        p = info.status.progress
        step = f"step {p.step}/{p.total_steps}" if p and p.step is not None and p.total_steps else ""
        text = " ".join(filter(None, [info.phase, step, info.status.metric or ""]))
        if self.progress is not None:
            self.progress.update(self.task, total=(p.total_steps if p else None) or None,
                                 completed=(p.step if p else 0) or 0, info=text)  # fmt: skip
        elif text != self.last:
            print(f"{self.name}: {text}", file=sys.stderr, flush=True)
        self.last = text

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
