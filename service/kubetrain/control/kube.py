"""The one module that talks to the Kubernetes API for the operator (aiohttp over kopf's login credentials)."""

from __future__ import annotations

import base64
import datetime
import json
import ssl
import tempfile
import uuid
from typing import Any

import aiohttp

from .. import API_VERSION, GROUP, KIND, VERSION, __version__

TRAININGJOBS = f"/apis/{GROUP}/{VERSION}/namespaces/{{ns}}/trainingjobs"
PATHS = {
    ("v1", "ConfigMap"): "/api/v1/namespaces/{ns}/configmaps",
    ("ray.io/v1", "RayJob"): "/apis/ray.io/v1/namespaces/{ns}/rayjobs",
    ("ray.io/v1", "RayCluster"): "/apis/ray.io/v1/namespaces/{ns}/rayclusters",
    ("v1", "Event"): "/api/v1/namespaces/{ns}/events",
    (API_VERSION, KIND): TRAININGJOBS,
}
MERGE = {"Content-Type": "application/merge-patch+json"}


class KubeError(Exception):
    """An API answer the operator cannot go on from."""

    def __init__(self, status: int, text: str):
        super().__init__(f"HTTP {status}: {text[:500]}")
        self.status = status


class Response:
    """Status and body of one API answer."""

    def __init__(self, status: int, text: str):
        self.status_code, self.text = status, text

    def json(self) -> Any:
        return json.loads(self.text)


class Kube:
    """Async calls the operator makes; every (verb, resource) here is granted by manifests/rbac.yaml."""

    def __init__(self, server: str, headers: dict[str, str], ssl_context: Any = None, auth: Any = None):
        self.server = server.rstrip("/")
        self.headers = headers
        self.ssl = ssl_context
        self.auth = auth
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_connection(cls, info: Any) -> Kube:
        """From a kopf ConnectionInfo (kubeconfig or in-cluster service account)."""
        headers = {"Accept": "application/json", "User-Agent": f"kubetrain-operator/{__version__}"}
        auth = None
        if info.token:
            headers["Authorization"] = f"{info.scheme or 'Bearer'} {info.token}"
        elif info.username and info.password:
            auth = aiohttp.BasicAuth(info.username, info.password)
        return cls(info.server, headers, tls_context(info), auth)

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=20, ssl=self.ssl if self.ssl is not None else True)
            timeout = aiohttp.ClientTimeout(total=30)
            self._session = aiohttp.ClientSession(headers=self.headers, auth=self.auth, connector=connector,
                                                  timeout=timeout)  # fmt: skip
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _call(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> Response:
        data = json.dumps(body) if body is not None else None
        hdrs = {"Content-Type": "application/json", **(headers or {})} if data is not None else headers
        async with self.session.request(method, self.server + path, data=data, headers=hdrs) as r:
            return Response(r.status, await r.text())

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        r = await self._call("GET", f"{_path(api_version, kind, namespace)}/{name}")
        if r.status_code == 404:
            return None
        _check(r)
        return r.json()

    async def create(self, obj: dict[str, Any]) -> bool:
        """Create an object; False when it already exists (the deterministic name makes creation idempotent)."""
        ns = obj["metadata"]["namespace"]
        r = await self._call("POST", _path(obj["apiVersion"], obj["kind"], ns), obj)
        if r.status_code == 409:
            return False
        _check(r)
        return True

    async def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        """Delete an object in the background (its dependents go by garbage collection); False when it was gone."""
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"}
        r = await self._call("DELETE", f"{_path(api_version, kind, namespace)}/{name}", body)
        if r.status_code == 404:
            return False
        _check(r)
        return True

    async def patch_rayjob_suspend(self, namespace: str, name: str, suspend: bool) -> None:
        path = f"{_path('ray.io/v1', 'RayJob', namespace)}/{name}"
        _check(await self._call("PATCH", path, {"spec": {"suspend": suspend}}, MERGE))

    async def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        """Merge-patch operator-owned status keys through the status subresource (progress is left alone)."""
        assert "progress" not in status, "status.progress belongs to the runtime"
        path = f"{TRAININGJOBS.format(ns=namespace)}/{name}/status"
        r = await self._call("PATCH", path, {"status": status}, MERGE)
        if r.status_code != 404:  # deleted meanwhile: nothing to report on
            _check(r)

    async def event(self, job: dict[str, Any], type_: str, reason: str, message: str) -> None:
        meta = job["metadata"]
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:12]}", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
            },  # fmt: skip
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": "kubetrain-operator"},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "reportingComponent": "kubetrain-operator",
        }
        _check(await self._call("POST", _path("v1", "Event", meta["namespace"]), event))


def _path(api_version: str, kind: str, namespace: str) -> str:
    return PATHS[(api_version, kind)].format(ns=namespace)


def _check(r: Response) -> None:
    if r.status_code >= 400:
        raise KubeError(r.status_code, r.text)


def tls_context(info: Any) -> Any:
    """TLS for a kopf ConnectionInfo: False (insecure), an SSLContext (its CA and client certificate), or None
    (the system's defaults). The operator and the SDK's kube backend connect the same way."""
    if info.insecure:
        return False
    if not (info.ca_path or info.ca_data or info.certificate_path or info.certificate_data):
        return None
    context = ssl.create_default_context(cafile=info.ca_path or None,
                                         cadata=_pem(info.ca_data) if info.ca_data else None)  # fmt: skip
    if info.certificate_path or info.certificate_data:
        context.load_cert_chain(_file(info.certificate_path, info.certificate_data),
                                _file(info.private_key_path, info.private_key_data))  # fmt: skip
    return context


def _pem(data: Any) -> str:
    """kubeconfig *-data fields are base64 of PEM."""
    text = data.decode() if isinstance(data, bytes) else str(data)
    return text if "-----BEGIN" in text else base64.b64decode(text).decode()


def _file(path: str | None, data: Any) -> str | None:
    if path or not data:
        return path
    raw = data if isinstance(data, bytes) else base64.b64decode(data)
    f = tempfile.NamedTemporaryFile(prefix="kubetrain-", delete=False)  # noqa: SIM115 - must outlive this call
    f.write(raw)
    f.close()
    return f.name
