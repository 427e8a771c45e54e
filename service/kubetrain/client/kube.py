"""The Kubernetes backend: TrainingJob objects through the Kubernetes API (kubeconfig or in-cluster).

One write path: it creates, patches (spec.lifecycle.suspend) and deletes TrainingJobs only; the operator
does the rest. Credentials come from kopf's login helpers (the same ones the operator uses).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from typing import Any

import httpx

from .. import API_VERSION, GROUP, KIND, VERSION, __version__
from ..control.kube import tls_context
from ..spec import TrainingJob
from . import errors
from .base import Backend, label_selector
from .types import JobInfo

TRAININGJOBS = f"/apis/{GROUP}/{VERSION}/namespaces/{{ns}}/trainingjobs"
MERGE = {"Content-Type": "application/merge-patch+json"}


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


def check(r: httpx.Response) -> httpx.Response:
    """Raise the SDK error for a Kubernetes API error answer (a metav1.Status)."""
    if r.status_code >= 400:
        raise errors.from_answer(r)
    return r


class KubeBackend(Backend):
    """TrainingJobs in a cluster, as the credentials' user (RBAC decides what it may do)."""

    def __init__(self, conn: Connection | None = None, server: str | None = None, token: str | None = None):
        conn = conn or connection(server, token)
        self.http, self.default_namespace = conn.client(), conn.namespace

    def _call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            return check(self.http.request(method, path, **kw))
        except httpx.TimeoutException:
            raise errors.Unavailable(f"the Kubernetes API did not answer {method} {path} in time") from None
        except httpx.TransportError as e:
            raise errors.Unavailable(
                f"cannot reach the Kubernetes API at {self.http.base_url}: {e}"
            ) from None

    def submit(self, job: TrainingJob, namespace: str) -> JobInfo:
        return JobInfo.from_object(self.create_object(job, namespace))

    def create_object(
        self, job: TrainingJob, namespace: str, annotations: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """POST the TrainingJob; the object as the API server stored it."""
        obj = job.model_dump(mode="json", exclude_unset=True, exclude={"status"})
        obj.update(apiVersion=API_VERSION, kind=KIND)
        meta = obj.setdefault("metadata", {})
        meta["namespace"] = namespace
        for key in ("uid", "resourceVersion", "generation", "creationTimestamp", "managedFields"):
            meta.pop(key, None)  # server-set: a copied `kubectl get -o yaml` is resubmittable
        if annotations:
            meta["annotations"] = {**meta.get("annotations", {}), **annotations}
        return self._call("POST", TRAININGJOBS.format(ns=namespace), json=obj).json()

    def get(self, name: str, namespace: str) -> JobInfo:
        return JobInfo.from_object(self.get_object(name, namespace))

    def get_object(self, name: str, namespace: str) -> dict[str, Any]:
        return self._call("GET", f"{TRAININGJOBS.format(ns=namespace)}/{name}").json()

    def list(self, namespace: str, labels: dict[str, str] | None = None) -> list[JobInfo]:
        return [JobInfo.from_object(o) for o in self.list_objects(namespace, label_selector(labels))]

    def list_objects(self, namespace: str, selector: str = "") -> list[dict[str, Any]]:
        params = {"labelSelector": selector} if selector else {}
        items = self._call("GET", TRAININGJOBS.format(ns=namespace), params=params).json().get("items") or []
        return [{"apiVersion": API_VERSION, "kind": KIND, **o} for o in items]

    def delete(self, name: str, namespace: str) -> None:
        self._call("DELETE", f"{TRAININGJOBS.format(ns=namespace)}/{name}")

    def set_suspended(self, name: str, namespace: str, suspend: bool) -> JobInfo:
        body = json.dumps({"spec": {"lifecycle": {"suspend": suspend}}})
        path = f"{TRAININGJOBS.format(ns=namespace)}/{name}"
        return JobInfo.from_object(self._call("PATCH", path, content=body, headers=MERGE).json())

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
        path = f"/api/v1/namespaces/{namespace}/pods/{items[-1]['metadata']['name']}/log"
        with self.http.stream("GET", path, params={"follow": str(follow).lower()}, timeout=None) as r:
            if r.status_code >= 400:
                r.read()
                check(r)
            yield from r.iter_lines()

    def close(self) -> None:
        self.http.close()
