"""Events from the rank-0 worker to the driver (runtime/contract.py records) over a queue.

A queue rather than ray.train.report: report() is a barrier across workers, and we want per-step
progress without synchronising the workers every step. A Ray queue actor across Ray Train's processes,
a multiprocessing queue from a local process group, a plain queue.Queue when the recipe runs in the
driver's own process.
"""

from __future__ import annotations

import time
from typing import Any

import psutil

from ..contract import Event


class Channel:
    """Fire-and-forget sender to a ray.util.queue.Queue, a multiprocessing or a queue.Queue; None-safe."""

    def __init__(self, queue: Any | None, enabled: bool):
        self.queue = queue if enabled else None
        self._last_system = 0.0
        self._proc = psutil.Process()
        psutil.cpu_percent(None)

    def emit(self, event: Event) -> None:
        if self.queue is None:
            return
        if hasattr(self.queue, "actor"):  # a Ray queue actor
            self.queue.actor.put_nowait.remote(event)  # not awaited: never blocks the training step
        else:  # a queue of this process, or a multiprocessing queue (its feeder thread sends it)
            self.queue.put_nowait(event)

    def system_metrics(self, every_s: float = 10.0) -> dict[str, float]:
        """CPU and memory of this node (and GPU memory when present), sampled at most every `every_s`."""
        now = time.time()
        if now - self._last_system < every_s:
            return {}
        self._last_system = now
        vm = psutil.virtual_memory()
        out = {
            "system/cpu_utilization_percentage": psutil.cpu_percent(None),
            "system/system_memory_usage_megabytes": (vm.total - vm.available) / 2**20,
            "system/system_memory_usage_percentage": vm.percent,
            "system/worker_rss_megabytes": self._proc.memory_info().rss / 2**20,
        }
        try:
            import torch

            if torch.cuda.is_available():
                for i in range(torch.cuda.device_count()):
                    out[f"system/gpu_{i}_memory_usage_megabytes"] = torch.cuda.memory_allocated(i) / 2**20
        except Exception:  # system metrics must never break training
            pass
        return out
