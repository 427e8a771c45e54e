"""The local backend: each job runs as a background `kubetrain run` whose state and log live under
<root>/jobs/<namespace>/<name>/, so submit returns at once and get/wait/logs work from any process."""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import yaml

from ..schema.status import Phase, TrainingJobStatus
from ..spec import TrainingJob
from . import errors
from .base import Backend
from .types import JobInfo

STATE, DESIRED, LOG, SPEC = "state.json", "desired", "log", "job.yaml"


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_json(path: pathlib.Path, data: dict[str, Any]) -> None:
    """Atomic: a reader in another process sees the old or the new state, never half of it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def read_json(path: pathlib.Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class LocalBackend(Backend):
    """Jobs on this machine (local Ray, MLflow on SQLite under `root`), one background runner each."""

    def __init__(self, root: str | os.PathLike = ".kubetrain", cwd: str | os.PathLike | None = None):
        self.root = pathlib.Path(root).resolve()
        self.cwd = pathlib.Path(cwd or os.getcwd()).resolve()

    def _dir(self, name: str, namespace: str) -> pathlib.Path:
        return self.root / "jobs" / namespace / name

    def submit(self, job: TrainingJob, namespace: str) -> JobInfo:
        d = self._dir(job.name, namespace)
        try:
            d.mkdir(parents=True, exist_ok=False)
        except FileExistsError:
            if self._exists(d):
                raise errors.AlreadyExists(
                    f'trainingjob "{job.name}" already exists in {namespace}'
                ) from None
            shutil.rmtree(d, ignore_errors=True)  # a deletion that left its folder behind
            d.mkdir(parents=True)
        obj = job.model_dump(mode="json", exclude_none=True, exclude={"status"})
        obj["metadata"]["namespace"] = namespace
        (d / SPEC).write_text(yaml.safe_dump(obj, sort_keys=False))
        write_json(d / STATE, {"phase": Phase.PENDING.value, "created": now(), "cwd": str(self.cwd)})
        self._start(d)
        return self.get(job.name, namespace)

    def _start(self, d: pathlib.Path) -> None:
        (d / DESIRED).unlink(missing_ok=True)
        subprocess.Popen(
            [sys.executable, "-m", "kubetrain.client.runner", str(d), str(self.root)],
            cwd=self.cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,  # outlives this process, as a job outlives kubectl
        )  # fmt: skip

    @staticmethod
    def _exists(d: pathlib.Path) -> bool:
        """The job is there and not being deleted (a deleted job is gone at once, as in Kubernetes)."""
        if not (d / SPEC).is_file():
            return False
        try:
            return (d / DESIRED).read_text().strip() != "delete"
        except FileNotFoundError:
            return True

    def _info(self, d: pathlib.Path) -> JobInfo:
        obj = yaml.safe_load((d / SPEC).read_text())
        state = read_json(d / STATE)
        phase = state.get("phase", Phase.PENDING.value)
        message = state.get("message")
        if phase in (Phase.PENDING.value, Phase.RUNNING.value) and state.get("runner_pid"):
            if not alive(state["runner_pid"]):
                phase, message = Phase.FAILED.value, "the local runner exited unexpectedly"
        status = TrainingJobStatus(
            phase=phase, reason=state.get("reason"), message=message, startTime=state.get("started"),
            completionTime=state.get("finished"), workers=(obj.get("spec", {}).get("resources") or {}).get("workers"),
            progress=self._progress(obj, state.get("cwd")),
        )  # fmt: skip
        meta = obj["metadata"]
        return JobInfo(name=meta["name"], namespace=meta.get("namespace", "default"), labels=meta.get("labels") or {},
                       created=state.get("created"), spec=obj.get("spec") or {}, status=status)  # fmt: skip

    def _progress(self, obj: dict[str, Any], cwd: str | None) -> Any:
        """Latest step and metrics from the run's metrics.jsonl (the runtime writes it beside MLflow), in
        the run directory the runtime uses: <checkpoint.storage>/<name>, or <root>/runs/<name> for remote storage."""
        spec = obj.get("spec") or {}
        storage = (spec.get("checkpoint") or {}).get("storage") or ".kubetrain/runs"
        name = obj["metadata"]["name"]
        run_dir = (
            self.root / "runs" / name if "://" in storage else pathlib.Path(cwd or self.cwd) / storage / name
        )
        try:
            with (run_dir / "metrics.jsonl").open("rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - 8192))
                last = f.read().decode(errors="replace").strip().splitlines()[-1]
            record = json.loads(last)
        except (OSError, IndexError, ValueError):
            return None
        metrics = {
            k: float(v)
            for k, v in record.items()
            if k not in ("step", "time") and isinstance(v, (int, float))
        }
        step, total = record.get("step"), (spec.get("training") or {}).get("max_steps")
        percent = round(100 * step / total, 1) if isinstance(step, int) and total else None
        return {"step": step, "total_steps": total, "percent": percent, "metrics": metrics}

    def get(self, name: str, namespace: str) -> JobInfo:
        d = self._dir(name, namespace)
        if not self._exists(d):
            raise errors.NotFound(f'trainingjob "{name}" not found in {namespace}')
        try:
            return self._info(d)
        except (OSError, yaml.YAMLError, KeyError, TypeError) as e:
            raise errors.Unavailable(f"cannot read local job {name}: {e}") from None

    def list(self, namespace: str, labels: dict[str, str] | None = None) -> list[JobInfo]:
        base = self.root / "jobs" / namespace
        out = []
        for d in sorted(base.iterdir()) if base.is_dir() else []:
            if self._exists(d):
                info = self._info(d)
                if all(info.labels.get(k) == v for k, v in (labels or {}).items()):
                    out.append(info)
        return out

    def _stop(self, d: pathlib.Path, why: str) -> bool:
        """Ask the runner to stop its run (SIGINT: Ray shuts down cleanly); False if nothing runs."""
        (d / DESIRED).write_text(why)
        state = read_json(d / STATE)
        pid = state.get("run_pid")
        if alive(state.get("runner_pid")) and pid:
            try:
                os.killpg(pid, signal.SIGINT)
            except ProcessLookupError:
                pass
            return True
        return alive(state.get("runner_pid"))

    def delete(self, name: str, namespace: str) -> None:
        d = self._dir(name, namespace)
        if not self._exists(d):
            raise errors.NotFound(f'trainingjob "{name}" not found in {namespace}')
        if not self._stop(d, "delete"):
            shutil.rmtree(d, ignore_errors=True)  # nothing runs: the runner will not clean up

    def set_suspended(self, name: str, namespace: str, suspend: bool) -> JobInfo:
        info = self.get(name, namespace)
        d = self._dir(name, namespace)
        if info.finished:
            raise errors.AlreadyExists(
                f"trainingjob {name} has finished ({info.phase}); it cannot be suspended or resumed"
            )
        if suspend and info.phase != Phase.SUSPENDED.value:
            if not self._stop(d, "suspend"):
                write_json(d / STATE, {**read_json(d / STATE), "phase": Phase.SUSPENDED.value})
        elif not suspend and info.phase == Phase.SUSPENDED.value:
            state = read_json(d / STATE)
            if alive(state.get("runner_pid")):
                raise errors.AlreadyExists(f"trainingjob {name} is still stopping; resume it in a moment")
            write_json(d / STATE, {**state, "phase": Phase.PENDING.value, "reason": None, "message": None})
            self._start(d)  # the runtime resumes from the latest checkpoint
        return self.get(name, namespace)

    def logs(self, name: str, namespace: str, follow: bool = False) -> Iterator[str]:
        d = self._dir(name, namespace)
        self.get(name, namespace)
        path = d / LOG
        offset = 0
        while True:
            try:
                with path.open("rb") as f:
                    f.seek(offset)
                    chunk = f.read()
            except FileNotFoundError:
                chunk = b""
            lines = chunk.split(b"\n")
            for line in lines[:-1]:
                yield line.decode(errors="replace")
            offset += len(chunk) - len(lines[-1])
            if not follow:
                if lines[-1]:
                    yield lines[-1].decode(errors="replace")
                return
            try:
                info = self.get(name, namespace)
            except errors.NotFound:
                return
            if info.finished or info.phase == Phase.SUSPENDED.value:
                follow = False  # one more read for the last lines
                continue
            time.sleep(0.2)


def run_foreground(
    job: TrainingJob, root: str = ".kubetrain", show: bool = True, launcher: str = "auto"
) -> Any:
    """`kubetrain run`: the job in this process (imports the runtime lazily); user mistakes -> errors.Invalid.
    launcher: how a single run's workers start (runtime/run/job.py choose_launcher); a sweep runs on Ray Tune."""
    from ..runtime.run.job import JobError, run_job
    from ..spec import Problem

    try:
        if job.spec.sweep is not None:
            from ..runtime.sweep.driver import run_sweep

            return run_sweep(job, local_root=root, show=show)
        return run_job(job, local_root=root, show=show, launcher=launcher)
    except JobError as e:
        raise errors.Invalid([Problem("", str(e))]) from None
