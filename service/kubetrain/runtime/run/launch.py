"""Starting a run's workers: a Ray Train worker group (TorchTrainer), a local process group without Ray
(run/processes.py), or the recipe in a thread of this process.

Each way, what waits for the workers runs in a thread of the driver (Ray Train's fit() blocks), rank 0's
events arrive on a queue, and a failure is kept as one line of text in the form Ray Train reports it.
"""

from __future__ import annotations

import contextlib
import os
import queue as stdqueue
import threading
import traceback
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

from ...spec import TrainingJob
from .. import contract as ev
from ..contract import WorkerConfig
from ..train.session import process_group_backend
from .processes import ProcessGroup
from .ray_start import QUIET_ENV, forwarded_env

# The last line of a worker's traceback that names the cause (Ray wraps worker exceptions several times).
_CAUSES = tuple(
    "ValueError RuntimeError DataError KeyError TypeError ModelUnavailable FileNotFoundError".split()
)


class Launched:
    """The workers of one run at work in a thread of this process; their events arrive on `queue`."""

    def __init__(
        self,
        body: Callable[[], Any],
        queue: Any,
        handshake: ev.Handshake | None = None,
        stop: Callable[[], None] | None = None,
    ):
        self.queue = queue
        self.on_ray = hasattr(queue, "actor")  # a Ray queue actor, else a queue of this machine's processes
        self.error: BaseException | None = None
        self.handshake = handshake  # an in-process recipe's: it waits for each evaluation to be handled
        self._stop = stop  # ends a local process group
        self._thread = threading.Thread(target=self._run, args=(body,), name="kubetrain-fit", daemon=True)
        self._thread.start()

    def _run(self, body: Callable[[], Any]) -> None:
        try:
            body()
        except BaseException as e:  # reported by the driver, in its own thread
            self.error = e

    def running(self) -> bool:
        return self._thread.is_alive()

    def next_events(self, wait_s: float) -> list[ev.Event]:
        """The events that came within wait_s: on this machine, as soon as the first arrives (an in-process
        recipe may be waiting for it to be handled); from a Ray queue actor, whatever is there after wait_s."""
        if self.on_ray:
            self._thread.join(wait_s)
            return self.drain()
        try:
            first = self.queue.get(timeout=wait_s)
        except stdqueue.Empty:
            return []
        return [first, *self.drain()]

    def handled(self, events: list[ev.Event]) -> None:
        """Tell an in-process recipe that these events were handled (it waits after each evaluation)."""
        if self.handshake is None:
            return
        for event in events:
            if isinstance(event, ev.Evaluated) and event.tag == "periodic":
                self.handshake.evaluation_handled()

    def stop(self) -> None:
        """Make an in-process recipe end (before its next micro-batch, or while it waits), or end a local
        process group, and wait until it has; a Ray Train worker group is not asked: its actors end with the
        process that owns them."""
        if self.handshake is not None:
            self.handshake.stop.set()
        elif self._stop is not None:
            self._stop()
        else:
            return
        self._thread.join()

    def drain(self) -> list[ev.Event]:
        """Everything queued so far (never blocks)."""
        out: list[ev.Event] = []
        try:
            while (n := self.queue.qsize()) > 0:
                out += (
                    self.queue.get_nowait_batch(n)
                    if self.on_ray
                    else [self.queue.get_nowait() for _ in range(n)]
                )
        except stdqueue.Empty:
            pass
        return out

    def error_text(self) -> str | None:
        """The failure's root cause in one line, or None when the run succeeded."""
        if self.error is None:
            return None
        if self.on_ray:
            text = str(self.error)
        else:  # the exception (a process group's carries its worker's traceback), as Ray shows it
            text = "".join(traceback.format_exception_only(self.error))
        return short_error(text) or type(self.error).__name__

    def close(self) -> None:
        """Stop the Ray queue actor (a queue of this machine needs nothing)."""
        if not self.on_ray:
            return
        import ray

        with contextlib.suppress(Exception):
            ray.kill(self.queue.actor)


def short_error(text: str) -> str:
    """The root cause in one line: the last line that names an exception we know, else the last line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.startswith(_CAUSES):
            return ln
    return lines[-1] if lines else ""


def import_launch(launcher: str) -> None:
    """Import what launching needs (seconds: torch, and Ray Train or the recipe), so it can be done ahead, in
    a thread. A process group's driver needs torch.multiprocessing only (its processes import the rest)."""
    if launcher == "processes":
        import torch.multiprocessing  # noqa: F401

        return
    from ..train import recipe  # noqa: F401

    if launcher == "ray":
        import ray.train.torch  # noqa: F401
        import ray.util.queue  # noqa: F401


def launch(
    job: TrainingJob,
    config: WorkerConfig,
    *,
    launcher: str,
    worker_env: dict[str, str] | None,
    log_dir: str | None = None,
) -> Launched:
    """Start the run's workers (launcher: ray, processes or in_process); config.queue is set here to the queue that fits
    how they run. log_dir: where a process group's workers write their output (None: the console)."""
    if launcher == "in_process":
        return _in_process(job, replace(config, queue=stdqueue.Queue()), worker_env)
    if launcher == "processes":
        return _processes(job, config, worker_env, log_dir)
    return _ray_train(job, config, worker_env)


def _processes(
    job: TrainingJob, config: WorkerConfig, worker_env: dict[str, str] | None, log_dir: str | None
) -> Launched:
    """spec.resources.workers processes of this machine (run/processes.py); events over a multiprocessing queue."""
    import torch.multiprocessing as mp

    config = replace(config, queue=mp.get_context("spawn").Queue())
    env = {**QUIET_ENV, **forwarded_env(job.spec), **(worker_env or {})}
    group = ProcessGroup(job, config, env, log_dir)
    return Launched(group.run, config.queue, stop=group.stop)


def _in_process(job: TrainingJob, config: WorkerConfig, worker_env: dict[str, str] | None) -> Launched:
    """The recipe in a thread here (world size 1): no worker processes to start (a sweep's small trials)."""
    from ..train.recipe import train_in_process

    spec = job.spec
    env = {**forwarded_env(spec), **(worker_env or {})}
    handshake = ev.Handshake()

    def body() -> None:
        with _environment(env):
            train_in_process(
                config,
                storage_path=spec.checkpoint.storage,
                run_name=job.name,
                keep_last=spec.checkpoint.keep_last,
                handshake=handshake,
            )

    return Launched(body, config.queue, handshake)


@contextlib.contextmanager
def _environment(env: dict[str, str]) -> Iterator[None]:
    """The job's environment variables for the duration of an in-process run, then as they were."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _ray_train(job: TrainingJob, config: WorkerConfig, worker_env: dict[str, str] | None) -> Launched:
    """A TorchTrainer over spec.resources.workers Ray workers; events over a Ray queue actor."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.util.queue import Queue

    from ..train.recipe import train_loop_per_worker

    spec, res = job.spec, job.spec.resources
    config = replace(config, queue=Queue(actor_options={"num_cpus": 0}))
    backend = process_group_backend(spec)
    gpus = {"GPU": res.gpus_per_worker} if res.gpus_per_worker else {}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config,
        torch_config=TorchConfig(backend=backend),
        scaling_config=ray.train.ScalingConfig(
            num_workers=res.workers,
            use_gpu=res.gpus_per_worker > 0,
            resources_per_worker={"CPU": res.cpus_per_worker, **gpus},
        ),
        run_config=ray.train.RunConfig(
            name=job.name,
            storage_path=spec.checkpoint.storage,
            failure_config=ray.train.FailureConfig(max_failures=spec.lifecycle.max_worker_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=spec.checkpoint.keep_last),
            worker_runtime_env={"env_vars": {**QUIET_ENV, **forwarded_env(spec), **(worker_env or {})}},
        ),
    )
    return Launched(trainer.fit, config.queue)
