"""Events from the rank-0 worker to the driver (progress, metrics, notices) over a Ray queue actor.

A queue rather than ray.train.report: report() is a barrier across workers, and we want per-step
progress without synchronising the workers every step. Works the same locally and in a cluster.
"""

from __future__ import annotations

import time
from typing import Any

import psutil


class Channel:
    """Fire-and-forget sender around a ray.util.queue.Queue; None-safe so the loop also runs without one."""

    def __init__(self, queue: Any | None, enabled: bool):
        self.queue = queue if enabled else None
        self._last_system = 0.0
        self._proc = psutil.Process()
        psutil.cpu_percent(None)

    def emit(self, kind: str, **data: Any) -> None:
        if self.queue is None:
            return
        data["kind"] = kind
        data.setdefault("time", time.time())
        self.queue.actor.put_nowait.remote(data)  # not awaited: never blocks the training step

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
