"""MLflow for one run, written only from the driver: params, tags, metrics, artifacts; falls back when unreachable.

The MlflowClient API is used throughout (no fluent global state), so sweeps can nest runs safely and
MLFLOW_EXPERIMENT_ID in the environment cannot redirect a run (a known Ray + MLflow pitfall).

A tracking server that is unreachable at the start: the run records into a local SQLite store instead.
One that goes away mid-run: buffer and retry. A failed call and every call after it wait in order in a
queue; each later call first retries the queue, and the run's end retries it until KUBETRAIN_MLFLOW_FLUSH_TIMEOUT
seconds (default 120) have passed, so a server that comes back receives every metric, tag and artifact.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import platform
import subprocess
import time
from typing import Any

from ... import __version__
from ...spec import TrainingJob
from . import dataset_inputs, lineage
from .dataset_inputs import DatasetRecord

log = logging.getLogger(__name__)
MAX_PARAM = 6000
MAX_PENDING = (
    100_000  # calls kept for a server that is away; older ones are dropped (metrics.jsonl keeps all)
)


def default_uri(root: str) -> str:
    return "sqlite:///" + os.path.join(os.path.abspath(root), "mlflow.db")


def flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """{'a': {'b': 1}} -> {'a.b': '1'}; lists of scalars stay one value, lists of mappings are indexed."""
    out: dict[str, str] = {}
    if isinstance(value, dict):
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(value, list) and any(isinstance(v, dict) for v in value):
        for i, v in enumerate(value):
            out.update(flatten(v, f"{prefix}.{i}"))
    else:
        out[prefix] = (json.dumps(value) if isinstance(value, list) else str(value))[:MAX_PARAM]
    return out


def git_commit(cwd: str = ".") -> tuple[str | None, bool]:
    """(HEAD commit, dirty?) when cwd is inside a git work tree."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5
        )
        if head.returncode:
            return None, False
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return head.stdout.strip(), bool(dirty.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return None, False


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("torch", "ray", "transformers", "peft", "datasets", "deepspeed", "mlflow"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


class Tracker:
    """One MLflow run. Every call is guarded: tracking trouble is reported once and never fails training."""

    def __init__(
        self,
        job: TrainingJob,
        run_dir: str,
        local_root: str,
        *,
        parent_run_id: str | None = None,
        extra_tags: dict[str, str] | None = None,
    ):
        self.job = job
        self.run_dir = run_dir
        self.local_root = local_root
        self.parent_run_id = parent_run_id
        self.extra_tags = extra_tags or {}
        self.metrics_file = os.path.join(run_dir, "metrics.jsonl")
        self.client = None
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.uri = job.spec.tracking.tracking_uri or default_uri(local_root)
        self.fallback: str | None = None  # why we are not writing to the configured store
        self._warned = False
        self._pending: collections.deque[tuple[Any, tuple, dict]] = collections.deque()
        self.dropped = 0  # calls dropped from a full queue
        self._next_retry, self._backoff = 0.0, 1.0  # while away, the server is retried at most this often
        self.evaluations: lineage.Evaluations = {}  # what the published models scored (linked to them)
        self.validation_data: DatasetRecord | None = None  # the dataset input those metrics come from

    # -- setup ---------------------------------------------------------------------------------
    def start(self, tags: dict[str, str]) -> None:
        os.makedirs(self.run_dir, exist_ok=True)
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
        try:
            self._open(self.uri)
        except Exception as e:
            fallback = default_uri(self.run_dir)
            self.fallback = f"MLflow at {self.uri} is unreachable ({type(e).__name__}); kept in {fallback}"
            log.warning(self.fallback)
            self.uri = fallback
            self._open(fallback)
        self._guard(self._log_start, tags)

    def _open(self, uri: str) -> None:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        name = self.job.spec.tracking.experiment or self.job.name
        exp = client.get_experiment_by_name(name)
        if exp is None:
            location = None
            if uri.startswith("sqlite:///"):
                root = os.path.dirname(uri.removeprefix("sqlite:///"))
                location = "file://" + os.path.join(root, "mlartifacts", name)
            self.experiment_id = client.create_experiment(name, artifact_location=location)
        else:
            self.experiment_id = exp.experiment_id
        self.client = client

    def _log_start(self, tags: dict[str, str]) -> None:
        from mlflow.entities import Param

        t = self.job.spec.tracking
        all_tags = {
            "kubetrain.version": __version__,
            "kubetrain.job": self.job.name,
            **tags,
            **self.extra_tags,
            **t.tags,
        }
        if self.parent_run_id:
            all_tags["mlflow.parentRunId"] = self.parent_run_id
        if not self.run_id:  # else a retried start: the run exists, the rest is safe to repeat
            run = self.client.create_run(
                self.experiment_id, run_name=t.run_name or self.job.name, tags=all_tags
            )
            self.run_id = run.info.run_id
        params = flatten(self.job.model_dump(mode="json", include={"spec"}, exclude_none=True))
        items = [Param(k[:250], v) for k, v in sorted(params.items())]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])
        spec_path = os.path.join(self.run_dir, "trainingjob.yaml")
        import yaml

        with open(spec_path, "w") as f:
            yaml.safe_dump(
                self.job.model_dump(mode="json", exclude_none=True, exclude={"status"}), f, sort_keys=False
            )
        self.client.log_artifact(self.run_id, spec_path)

    # -- during the run --------------------------------------------------------------------------
    def log_metrics(self, metrics: dict[str, float], step: int, now: int | None = None) -> None:
        now = now or int(time.time() * 1000)
        with open(self.metrics_file, "a") as f:
            f.write(json.dumps({"step": step, "time": now, **metrics}) + "\n")
        if self.run_id:
            from mlflow.entities import Metric

            batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if _finite(v)]
            self._guard(self.client.log_batch, self.run_id, metrics=batch)

    def log_evaluation(self, metrics: dict[str, float], step: int) -> None:
        """Validation metrics, remembered with their timestamp: a published model's metrics link to them."""
        now = int(time.time() * 1000)
        remembered = {k: (now, float(v)) for k, v in metrics.items() if _finite(v)}
        self.evaluations.setdefault(step, {}).update(remembered)
        self.log_metrics(metrics, step, now)

    def log_datasets(self, datasets: list[DatasetRecord]) -> None:
        """The training and validation data as the run's dataset inputs (lineage)."""
        self.validation_data = next((d for d in datasets if d.context == "validation"), None)
        if not (self.run_id and datasets):
            return
        try:
            inputs = dataset_inputs.to_inputs(datasets)
        except Exception as e:  # describing the data is a nicety: never a reason to fail the run
            log.warning("dataset inputs not logged: %s: %s", type(e).__name__, e)
            return
        self._guard(self.client.log_inputs, self.run_id, datasets=inputs)

    def log_params(self, params: dict[str, str]) -> None:
        """Params resolved during the run (the spec's own are logged at the start)."""
        if self.run_id and params:
            from mlflow.entities import Param

            items = [Param(k[:250], str(v)[:MAX_PARAM]) for k, v in sorted(params.items())]
            self._guard(self.client.log_batch, self.run_id, params=items)

    def set_tags(self, tags: dict[str, str]) -> None:
        if self.run_id:
            for k, v in tags.items():
                self._guard(self.client.set_tag, self.run_id, k, v)

    def log_artifacts(self, local_dir: str, artifact_path: str | None = None) -> None:
        if self.run_id and os.path.exists(local_dir):
            self._guard(self.client.log_artifacts, self.run_id, local_dir, artifact_path)

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None:
        if self.run_id and os.path.exists(path):
            self._guard(self.client.log_artifact, self.run_id, path, artifact_path)

    def record_models(
        self, records: list[lineage.ModelRecord], registration: lineage.Registration | None = None
    ) -> lineage.ModelWriter | None:
        """The published models as LoggedModels with their metrics; the final one registered (lineage)."""
        if not self.run_id or not records:
            return None
        writer = lineage.ModelWriter(
            self.client, self.run_id, self.experiment_id, records, registration, self.validation_data
        )
        self._guard(writer)  # one call: queued and retried as a whole, going on where it stopped
        return writer

    def end(self, status: str) -> None:
        if self.run_id:
            self._guard(self.client.set_terminated, self.run_id, status)
            self.flush(float(os.environ.get("KUBETRAIN_MLFLOW_FLUSH_TIMEOUT", "120")))

    @property
    def pending(self) -> int:
        """Calls still waiting for the tracking server."""
        return len(self._pending)

    def flush(self, timeout: float) -> bool:
        """Retry the queued calls until they all went through or timeout seconds have passed."""
        deadline, wait = time.monotonic() + timeout, 0.5
        while not self._retry():
            if time.monotonic() + wait > deadline:
                log.warning(
                    "MLflow at %s stayed unreachable: %d calls not delivered; metrics are kept in %s",
                    self.uri,
                    len(self._pending),
                    self.metrics_file,
                )
                return False
            time.sleep(wait)
            wait = min(wait * 2, 10.0)
        if self._warned:
            log.warning("MLflow at %s is back: every buffered call was delivered", self.uri)
        return True

    # -- links ----------------------------------------------------------------------------------
    def ui_hint(self) -> str:
        if not self.run_id:
            return f"metrics were kept in {self.metrics_file}"
        path = f"#/experiments/{self.experiment_id}/runs/{self.run_id}"
        if self.uri.startswith("http"):
            return f"{self.uri.rstrip('/')}/{path}"
        return (
            f"mlflow ui --backend-store-uri {self.uri} --port 5000   then open http://127.0.0.1:5000/{path}"
        )

    def _guard(self, fn, *args, **kwargs) -> Any:
        """Call fn now, or queue it behind earlier failed calls (order matters: a tag after its run...)."""
        if self._pending and (time.monotonic() < self._next_retry or not self._retry()):
            self._queue(fn, args, kwargs)
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            if _hopeless(e):
                log.warning(
                    "MLflow rejected %s: %s", getattr(fn, "__name__", fn), str(e).splitlines()[0][:200]
                )
                return None
            if not self._warned:
                self._warned = True
                log.warning(
                    "MLflow call failed (%s: %s); buffering and retrying (metrics are also kept in %s)",
                    type(e).__name__,
                    str(e).splitlines()[0][:200] if str(e) else "",
                    self.metrics_file,
                )
            self._queue(fn, args, kwargs)
            self._next_retry = time.monotonic() + self._backoff
            return None

    def _queue(self, fn, args: tuple, kwargs: dict) -> None:
        if len(self._pending) >= MAX_PENDING:
            self._pending.popleft()
            self.dropped += 1
        self._pending.append((fn, args, kwargs))

    def _retry(self) -> bool:
        """Deliver queued calls in order; False (and the rest kept) at the first that still fails."""
        while self._pending:
            fn, args, kwargs = self._pending[0]
            try:
                fn(*args, **kwargs)
            except Exception as e:
                if not _hopeless(e):
                    self._next_retry = time.monotonic() + self._backoff
                    self._backoff = min(self._backoff * 2, 30.0)
                    return False
                log.warning("MLflow rejected a buffered call: %s", str(e).splitlines()[0][:200])
            self._pending.popleft()
        self._backoff = 1.0
        return True


def _hopeless(e: Exception) -> bool:
    """The server answered and refused (bad input), or a local file is gone: retrying cannot help."""
    if isinstance(e, FileNotFoundError):
        return True
    code = getattr(e, "get_http_status_code", lambda: None)()
    return isinstance(code, int) and 400 <= code < 500 and code not in (408, 429)


def _finite(v: Any) -> bool:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return False
    return f == f and f not in (float("inf"), float("-inf"))


def learning_curve(history: list[dict], path: str) -> str | None:
    """Train loss per step and validation loss per evaluation, as a PNG."""
    train = [(h["step"], h["train_loss"]) for h in history if "train_loss" in h]
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    if not train and not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train loss", linewidth=1)
    if evals:
        ax.plot(*zip(*evals), "o-", label="validation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
