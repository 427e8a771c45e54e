"""Prometheus metrics of the operator: jobs by phase, reconcile count and latency, errors."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from ..schema.status import Phase


class Metrics:
    """The operator's metrics on their own registry (so tests and several operators in one process don't clash)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.jobs = Gauge(
            "kubetrain_trainingjobs", "TrainingJobs by phase.", ["phase"], registry=self.registry
        )
        self.reconciles = Counter(
            "kubetrain_reconcile", "Reconciles by trigger.", ["trigger"], registry=self.registry
        )
        self.latency = Histogram("kubetrain_reconcile_seconds", "Reconcile latency.", registry=self.registry)
        self.errors = Counter("kubetrain_reconcile_errors", "Reconciles that raised.", registry=self.registry)
        self.created = Counter("kubetrain_rayjobs_created", "RayJobs created.", registry=self.registry)
        self._phases: dict[tuple[str, str], str] = {}
        for phase in Phase:
            self.jobs.labels(phase=phase.value).set(0)

    def observe_phase(self, namespace: str, name: str, phase: str | None) -> None:
        key = (namespace, name)
        if phase is None:
            self._phases.pop(key, None)
        elif phase:
            self._phases[key] = phase
        counts = {p.value: 0 for p in Phase}
        for value in self._phases.values():
            counts[value] = counts.get(value, 0) + 1
        for value, count in counts.items():
            self.jobs.labels(phase=value).set(count)

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        start_http_server(port, addr=addr, registry=self.registry)
