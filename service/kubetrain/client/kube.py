"""The Kubernetes backend: TrainingJob objects through the Kubernetes API (kubeconfig or in-cluster).

One write path: it creates, patches (spec.lifecycle.suspend) and deletes TrainingJobs only; the operator
does the rest. Credentials come from kopf's login helpers (the same ones the operator uses).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import httpx

from .. import __version__
from ..control.kube import tls_context
from . import errors
from .http import HttpBackend


@dataclasses.dataclass
class Connection:
    """Where the cluster is and how to prove who we are: enough to build a sync or an async HTTP client."""

    server: str
    headers: dict[str, str]
    verify: Any = True
    auth: Any = None
    namespace: str = "default"

    def options(self) -> dict[str, Any]:
        return dict(
            base_url=self.server.rstrip("/"), verify=self.verify, auth=self.auth, timeout=httpx.Timeout(30.0),
            headers={"Accept": "application/json", "User-Agent": f"kubetrain-sdk/{__version__}", **self.headers},
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
        )  # fmt: skip

    def client(self) -> httpx.Client:
        return httpx.Client(**self.options())

    def async_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(**self.options())


def connection(server: str | None = None, token: str | None = None) -> Connection:
    """Explicit server/token, else kubeconfig ($KUBECONFIG, ~/.kube/config) or the in-cluster service
    account, read by kopf's login helpers (the ones the operator uses)."""
    if server:
        return Connection(server, {"Authorization": f"Bearer {token}"} if token else {})
    import kopf

    settings = kopf.OperatorSettings()
    info = None
    for login in (kopf.login_with_service_account, kopf.login_with_kubeconfig):
        try:
            info = login(settings=settings)
        except Exception as e:  # kopf raises its own LoginError for a broken kubeconfig
            raise errors.Unavailable(f"cannot read Kubernetes credentials: {e}") from None
        if info is not None:
            break
    if info is None:
        raise errors.Unavailable("no Kubernetes credentials: set KUBECONFIG or run inside a cluster")
    headers = {"Authorization": f"{info.scheme or 'Bearer'} {info.token}"} if info.token else {}
    auth = (info.username, info.password) if info.username and info.password and not info.token else None
    context = tls_context(info)
    context = True if context is None else context  # httpx: True verifies with the system's CAs
    return Connection(info.server, headers, context, auth, info.default_namespace or "default")


class KubeBackend(HttpBackend):
    """TrainingJobs in a cluster, as the credentials' user (RBAC decides what it may do)."""

    what = "the Kubernetes API"

    def __init__(self, conn: Connection | None = None, server: str | None = None, token: str | None = None):
        conn = conn or connection(server, token)
        self.http, self.default_namespace = conn.client(), conn.namespace

    def logs(self, name: str, namespace: str, follow: bool = False) -> Iterator[str]:
        """The entrypoint's output: the log of the RayJob's submitter pod (KubeRay names its Job after the RayJob)."""
        ray_job = self.get(name, namespace).status.rayJobName
        if not ray_job:
            raise errors.NotFound(f"trainingjob {name} has no RayJob yet, so no logs")
        pods = self._call(
            "GET", f"/api/v1/namespaces/{namespace}/pods", params={"labelSelector": f"job-name={ray_job}"}
        )
        items = sorted(
            pods.json().get("items") or [], key=lambda p: p["metadata"].get("creationTimestamp") or ""
        )
        if not items:
            raise errors.NotFound(
                f"trainingjob {name}: the submitter pod of RayJob {ray_job} is not there (yet)"
            )
        yield from self._lines(
            f"/api/v1/namespaces/{namespace}/pods/{items[-1]['metadata']['name']}/log", follow
        )
