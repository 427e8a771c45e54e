"""A local run's workers as processes of this machine, started the way torchrun starts them (one process per
worker, RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT in each environment): no Ray, no Ray Train.

A local run does not need Ray Train's controller and its actors (half a minute of start-up on a small
machine, and a few percent of every step's CPU); a run in a cluster, or inside a Ray already up (a sweep's
trials), still uses Ray Train. Like Ray Train's FailureConfig(max_failures), a failed group is started again
up to max_failures times, and resumes from its latest checkpoint (train/session.py's GroupSession).
"""

from __future__ import annotations

import math
import os
import socket
import threading
from typing import Any

from ...spec import TrainingJob
from ..contract import WorkerConfig
from .paths import JobError


class ProcessGroup:
    """spec.resources.workers processes running the recipe (train/group_worker.py), restarted on failure."""

    def __init__(self, job: TrainingJob, config: WorkerConfig, env: dict[str, str], log_dir: str | None):
        res = job.spec.resources
        self.world, self.max_failures = res.workers, job.spec.lifecycle.max_worker_failures
        self.threads = max(1, int(res.cpus_per_worker))
        self.gpus = gpu_assignment(res.workers, res.gpus_per_worker)
        self.config, self.env, self.log_dir = config, env, log_dir
        self._lock = threading.Lock()
        self._context: Any = None
        self._stopped = False

    def run(self) -> None:
        """Start the group and wait for it; start it again after a failure while failures are allowed."""
        from torch.multiprocessing import ProcessExitedException, ProcessRaisedException

        failures = 0
        while True:
            try:
                return self._run_once()
            except (ProcessExitedException, ProcessRaisedException):
                if self._stopped or failures >= self.max_failures:
                    raise
                failures += 1

    def _run_once(self) -> None:
        import torch.multiprocessing as mp

        from ..train import group_worker

        with self._lock:
            if self._stopped:
                return
            args = (self.world, _free_port(), self.config, self.env, self.threads, self.gpus, self.log_dir)
            self._context = mp.start_processes(
                group_worker.main, args=args, nprocs=self.world, join=False, start_method="spawn"
            )
        while not self._context.join(timeout=1.0):  # raises when a process failed (the others are ended)
            pass

    def stop(self) -> None:
        """End every process of the group now (the driver was interrupted); run() then returns or raises."""
        with self._lock:
            self._stopped = True
            if self._context is None:
                return
            for process in self._context.processes:
                if process.is_alive():
                    process.terminate()


def gpu_assignment(workers: int, per_worker: float) -> list[str] | None:
    """Each worker's CUDA_VISIBLE_DEVICES: whole GPUs of this machine in order, as Ray gives them to its
    workers (a fraction of a GPU counts as one here); None on CPU. JobError when there are too few."""
    if not per_worker:
        return None
    import torch

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]
    each = math.ceil(per_worker)
    if workers * each > len(ids):
        raise JobError(
            f"spec.resources: {workers} worker(s) x {each} GPU(s) need {workers * each} GPUs; this machine has "
            f"{len(ids)} (lower resources.workers or gpus_per_worker, or run on a cluster)"
        )
    return [",".join(ids[w * each : (w + 1) * each]) for w in range(workers)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
