"""Report training progress into TrainingJob status.progress from inside the cluster (standard library only)."""

from __future__ import annotations

import json
import logging
import math
import os
import ssl
import time
import urllib.error
import urllib.request
from typing import Any

log = logging.getLogger(__name__)

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
PATH = "/apis/kubetrain.dev/v1alpha1/namespaces/{ns}/trainingjobs/{name}/status"
HEADLINE = ("eval_loss", "eval_accuracy", "loss", "train_loss")


class KubeStatusReporter:
    """Merge-PATCHes {"status": {"progress": ...}} through the status subresource; never raises."""

    def __init__(self, base_url: str, namespace: str, name: str, token: str | None = None,
                 ca_file: str | None = None, min_interval: float = 5.0, timeout: float = 10.0,
                 clock: Any = time.monotonic):  # fmt: skip
        self.url = base_url.rstrip("/") + PATH.format(ns=namespace, name=name)
        self.token = token
        self.context = ssl.create_default_context(cafile=ca_file) if ca_file else None
        self.min_interval = min_interval
        self.timeout = timeout
        self.clock = clock
        self._last: float | None = None
        self._warned = False
        self.sent = 0

    @classmethod
    def from_env(cls) -> KubeStatusReporter | None:
        """In a kubetrain Ray pod: KUBETRAIN_JOB_NAME/NAMESPACE and the service account; None elsewhere.

        KUBETRAIN_KUBE_URL and KUBETRAIN_KUBE_TOKEN override the API address and token (tests, out-of-cluster).
        """
        name, namespace = os.environ.get("KUBETRAIN_JOB_NAME"), os.environ.get("KUBETRAIN_JOB_NAMESPACE")
        if not name or not namespace:
            return None
        interval = float(os.environ.get("KUBETRAIN_PROGRESS_INTERVAL", "5"))
        url = os.environ.get("KUBETRAIN_KUBE_URL")
        if url:
            return cls(
                url, namespace, name, token=os.environ.get("KUBETRAIN_KUBE_TOKEN"), min_interval=interval
            )
        host, port = (
            os.environ.get("KUBERNETES_SERVICE_HOST"),
            os.environ.get("KUBERNETES_SERVICE_PORT", "443"),
        )
        token_file, ca_file = os.path.join(SA_DIR, "token"), os.path.join(SA_DIR, "ca.crt")
        if not host or not os.path.exists(token_file):
            return None
        try:
            with open(token_file) as f:
                token = f.read().strip()
        except OSError:
            return None
        host = f"[{host}]" if ":" in host else host
        ca = ca_file if os.path.exists(ca_file) else None
        return cls(f"https://{host}:{port}", namespace, name, token=token, ca_file=ca, min_interval=interval)

    def report(self, progress: dict[str, Any], final: bool = False) -> None:
        """Send progress unless one was sent less than min_interval ago (a final report always goes)."""
        now = self.clock()
        if not final and self._last is not None and now - self._last < self.min_interval:
            return
        self._last = now
        try:
            body = json.dumps({"status": _status(progress)}).encode()
            request = urllib.request.Request(self.url, data=body, method="PATCH")
            request.add_header("Content-Type", "application/merge-patch+json")
            request.add_header("Accept", "application/json")
            if self.token:
                request.add_header("Authorization", f"Bearer {self.token}")
            with urllib.request.urlopen(request, timeout=self.timeout, context=self.context) as response:
                response.read()
            self.sent += 1
        except Exception as e:  # progress is best effort: training must never stop for it
            if not self._warned:
                self._warned = True
                log.warning("cannot report progress to %s: %s (further failures are not logged)", self.url, e)


def _status(progress: dict[str, Any]) -> dict[str, Any]:
    """status patch: progress (JSON-safe floats), the headline metric and the MLflow run id."""
    clean = {k: v for k, v in progress.items() if v is not None}
    health = clean.pop("health", None)  # run/diagnosis.py: a NaN stop's reason and message, warnings
    if "metrics" in clean:
        clean["metrics"] = {k: float(v) for k, v in clean["metrics"].items() if _finite(v)}
    for key in ("percent", "eta_seconds"):
        if key in clean and not _finite(clean[key]):
            clean.pop(key)
    if "percent" in clean:
        clean["percent"] = round(float(clean["percent"]), 1)
    clean.setdefault("updated", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    out: dict[str, Any] = {"progress": clean}
    if health:
        out["health"] = health
    metrics = clean.get("metrics") or {}
    for name in HEADLINE:
        if name in metrics:
            out["metric"] = f"{name}={metrics[name]:.4g}"
            break
    if clean.get("mlflow_run_id"):
        out["mlflowRunId"] = clean["mlflow_run_id"]
    return out


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False
