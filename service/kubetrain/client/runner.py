"""The background runner of one local job: runs `kubetrain run` and records its phase in state.json.

`python -m kubetrain.client.runner JOB_DIR ROOT`, started by LocalBackend in its own session.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

from ..schema.status import Phase
from .local import DESIRED, LOG, SPEC, STATE, now, read_json, write_json

GRACE_S = 60.0  # after a stop request, how long the run may take to shut Ray down before SIGKILL


def last_error(log: pathlib.Path) -> str:
    try:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    errs = [
        ln for ln in lines if ln.startswith("error:") or ": " in ln and ln.split(":")[0].endswith(".yaml")
    ]
    return (errs or lines or [""])[-1][:1000]


def main(job_dir: str, root: str) -> int:
    d = pathlib.Path(job_dir)
    state = read_json(d / STATE)
    if (d / DESIRED).is_file():  # stopped before it started
        return finish(d, None)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with (d / LOG).open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kubetrain.cli.main", "run", str(d / SPEC), "--root", root],
            cwd=state.get("cwd") or None, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env=env, start_new_session=True,  # its own group: a stop signals the run and its Ray processes
        )  # fmt: skip
    state.update(phase=Phase.RUNNING.value, started=state.get("started") or now(), runner_pid=os.getpid(),
                 run_pid=proc.pid, reason=None, message=None)  # fmt: skip
    write_json(d / STATE, state)
    stop_seen: float | None = None
    while True:
        try:
            rc = proc.wait(timeout=0.5)
            break
        except subprocess.TimeoutExpired:
            pass
        if (d / DESIRED).is_file():
            stop_seen = stop_seen or time.monotonic()
            if time.monotonic() - stop_seen > GRACE_S:
                os.killpg(proc.pid, signal.SIGKILL)
    return finish(d, rc)


def finish(d: pathlib.Path, rc: int | None) -> int:
    """Record how the run ended (or remove the job, if it was deleted)."""
    desired = (d / DESIRED).read_text().strip() if (d / DESIRED).is_file() else ""
    if desired == "delete":
        shutil.rmtree(d, ignore_errors=True)
        return 0
    state = read_json(d / STATE)
    if desired == "suspend":
        state.update(phase=Phase.SUSPENDED.value, reason="Suspended", message="suspended by request")
    elif rc == 0:
        state.update(phase=Phase.SUCCEEDED.value, reason="Succeeded", message=None, finished=now())
    else:
        reason = "InvalidSpec" if rc == 1 else "RunFailed"
        state.update(phase=Phase.FAILED.value, reason=reason, message=last_error(d / LOG) or f"exit code {rc}",
                     finished=now())  # fmt: skip
    state.update(exit_code=rc, runner_pid=None, run_pid=None)
    write_json(d / STATE, state)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
