"""The REST backend: the kubetrain API (`kubetrain api`) over HTTP with a bearer token."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx

from .. import API_VERSION, KIND, __version__
from ..spec import TrainingJob
from . import errors
from .base import Backend, label_selector
from .types import JobInfo

TRAININGJOBS = "/apis/kubetrain.dev/v1alpha1/namespaces/{ns}/trainingjobs"
MERGE = {"Content-Type": "application/merge-patch+json"}


def check(r: httpx.Response) -> httpx.Response:
    """Raise the SDK error for an API error answer (a Kubernetes-style Status with field causes)."""
    if r.status_code >= 400:
        raise errors.from_answer(r)
    return r


class RestBackend(Backend):
    """Jobs through a kubetrain API server; the server checks the token (TokenReview) and RBAC."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 30.0, verify: Any = True):
        headers = {"Accept": "application/json", "User-Agent": f"kubetrain-sdk/{__version__}"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout, verify=verify)
        self.default_namespace = "default"

    def _call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            return check(self.http.request(method, path, **kw))
        except httpx.TimeoutException:
            raise errors.Unavailable(f"the kubetrain API did not answer {method} {path} in time") from None
        except httpx.TransportError as e:
            raise errors.Unavailable(f"cannot reach the kubetrain API at {self.http.base_url}: {e}") from None

    def submit(self, job: TrainingJob, namespace: str) -> JobInfo:
        obj = job.model_dump(mode="json", exclude_unset=True, exclude={"status"})
        obj.update(apiVersion=API_VERSION, kind=KIND)
        return JobInfo.from_object(self._call("POST", TRAININGJOBS.format(ns=namespace), json=obj).json())

    def get(self, name: str, namespace: str) -> JobInfo:
        return JobInfo.from_object(self._call("GET", f"{TRAININGJOBS.format(ns=namespace)}/{name}").json())

    def list(self, namespace: str, labels: dict[str, str] | None = None) -> list[JobInfo]:
        selector = label_selector(labels)
        params = {"labelSelector": selector} if selector else {}
        items = self._call("GET", TRAININGJOBS.format(ns=namespace), params=params).json().get("items") or []
        return [JobInfo.from_object(o) for o in items]

    def delete(self, name: str, namespace: str) -> None:
        self._call("DELETE", f"{TRAININGJOBS.format(ns=namespace)}/{name}")

    def set_suspended(self, name: str, namespace: str, suspend: bool) -> JobInfo:
        body = json.dumps({"spec": {"lifecycle": {"suspend": suspend}}})
        path = f"{TRAININGJOBS.format(ns=namespace)}/{name}"
        return JobInfo.from_object(self._call("PATCH", path, content=body, headers=MERGE).json())

    def logs(self, name: str, namespace: str, follow: bool = False) -> Iterator[str]:
        path = f"{TRAININGJOBS.format(ns=namespace)}/{name}/logs"
        try:
            with self.http.stream("GET", path, params={"follow": str(follow).lower()}, timeout=None) as r:
                if r.status_code >= 400:
                    r.read()
                    check(r)
                yield from r.iter_lines()
        except httpx.TransportError as e:
            raise errors.Unavailable(f"cannot reach the kubetrain API at {self.http.base_url}: {e}") from None

    def close(self) -> None:
        self.http.close()
