"""The Kubernetes backend: TrainingJob objects through the Kubernetes API (kubeconfig or in-cluster).

One write path: it creates, patches (spec.lifecycle.suspend) and deletes TrainingJobs only; the operator
does the rest. Credentials come from kopf's login helpers (the same ones the operator uses).
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Generator, Iterator
from typing import Any

import httpx

from .. import __version__
from ..control.kube import tls_context
from . import errors
from .http import HttpBackend

# kopf's login_with_service_account reads the token here (the path every pod has)
SERVICE_ACCOUNT_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


class TokenFile:
    """A bearer token that follows its file. Projected service-account tokens expire (an hour by default) and
    the kubelet writes a fresh one in their place (an atomic swap of the file), so a token read once at start
    stops working; like client-go, the file is looked at again (at most every `period` s) and re-read when it
    changed."""

    def __init__(self, path: str, scheme: str = "Bearer", period: float = 1.0):
        self.path, self.scheme, self.period = path, scheme, period
        self._seen: tuple[int, int, int] | None = None  # (inode, mtime, size) of the file last read
        self._header = ""
        self._checked = float("-inf")
        self._lock = threading.Lock()
        self.header()  # a missing or empty file fails at start, not at the first request

    def header(self) -> str:
        """The Authorization header value for the token in the file now."""
        if time.monotonic() - self._checked >= self.period:
            with self._lock:
                self._refresh()
        return self._header

    def _refresh(self) -> None:
        self._checked = time.monotonic()
        try:
            st = os.stat(self.path)
            seen = (st.st_ino, st.st_mtime_ns, st.st_size)
            if seen == self._seen:
                return
            with open(self.path, encoding="utf-8") as f:
                token = f.read().strip()
        except OSError as e:
            if self._header:
                return  # between the kubelet's swap steps: the last token is still good for a while
            raise errors.Unavailable(f"cannot read the service account token {self.path}: {e}") from None
        if token:
            self._seen, self._header = seen, f"{self.scheme} {token}"
        elif not self._header:
            raise errors.Unavailable(f"the service account token {self.path} is empty")


class _TokenFileAuth(httpx.Auth):
    """httpx: the token file's current token on every request."""

    def __init__(self, token: TokenFile):
        self.token = token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = self.token.header()
        yield request


@dataclasses.dataclass
class Connection:
    """Where the cluster is and how to prove who we are: enough to build a sync or an async HTTP client.
    The bearer token is either fixed (in headers) or a TokenFile, read again when it rotates."""

    server: str
    headers: dict[str, str]
    verify: Any = True
    auth: Any = None
    namespace: str = "default"
    token_file: TokenFile | None = None

    def options(self) -> dict[str, Any]:
        """httpx client options (the token file's token set per request)."""
        auth = _TokenFileAuth(self.token_file) if self.token_file else self.auth
        return dict(
            base_url=self.server.rstrip("/"), verify=self.verify, auth=auth, timeout=httpx.Timeout(30.0),
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
    token_file = None
    if info.token and login is kopf.login_with_service_account:  # in a pod: the token rotates
        token_file = TokenFile(SERVICE_ACCOUNT_TOKEN, info.scheme or "Bearer")
    headers = (
        {"Authorization": f"{info.scheme or 'Bearer'} {info.token}"} if info.token and not token_file else {}
    )
    auth = (info.username, info.password) if info.username and info.password and not info.token else None
    context = tls_context(info)
    context = True if context is None else context  # httpx: True verifies with the system's CAs
    return Connection(info.server, headers, context, auth, info.default_namespace or "default", token_file)


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
