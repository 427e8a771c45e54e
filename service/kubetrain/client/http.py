"""TrainingJobs at Kubernetes paths over HTTP: the Kubernetes API itself (kube) or kubetrain's API (rest),
which serves the same paths. The verbs are written once here; a backend says how it connects."""

from __future__ import annotations

import abc
import json
from collections.abc import Iterator
from typing import Any

import httpx

from .. import API_VERSION, GROUP, KIND, VERSION
from ..spec import TrainingJob
from . import errors
from .base import Backend, label_selector
from .types import JobInfo

TRAININGJOBS = f"/apis/{GROUP}/{VERSION}/namespaces/{{ns}}/trainingjobs"
MERGE = {"Content-Type": "application/merge-patch+json"}
SERVER_SET = ("uid", "resourceVersion", "generation", "creationTimestamp", "managedFields")


def check(r: httpx.Response) -> httpx.Response:
    """Raise the SDK error for an error answer (a metav1.Status, with field causes on a 422)."""
    if r.status_code >= 400:
        raise errors.from_answer(r)
    return r


class HttpBackend(Backend):
    """create, get, list, delete and suspend/resume as Kubernetes-style HTTP calls through `self.http`."""

    http: httpx.Client
    what = "the API"  # named in connection errors

    def _call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            return check(self.http.request(method, path, **kw))
        except httpx.TimeoutException:
            raise errors.Unavailable(f"{self.what} did not answer {method} {path} in time") from None
        except httpx.TransportError as e:
            raise errors.Unavailable(f"cannot reach {self.what} at {self.http.base_url}: {e}") from None

    def submit(self, job: TrainingJob, namespace: str) -> JobInfo:
        return JobInfo.from_object(self.create_object(job, namespace))

    def create_object(
        self, job: TrainingJob, namespace: str, annotations: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """POST the TrainingJob; the object as the server stored it."""
        obj = job.model_dump(mode="json", exclude_unset=True, exclude={"status"})
        obj.update(apiVersion=API_VERSION, kind=KIND)
        meta = obj.setdefault("metadata", {})
        meta["namespace"] = namespace
        for key in SERVER_SET:
            meta.pop(key, None)  # a copied `kubectl get -o yaml` is resubmittable
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
        return [{"apiVersion": API_VERSION, "kind": KIND, **o} for o in items]  # list items carry no kind

    def delete(self, name: str, namespace: str) -> None:
        self._call("DELETE", f"{TRAININGJOBS.format(ns=namespace)}/{name}")

    def set_suspended(self, name: str, namespace: str, suspend: bool) -> JobInfo:
        body = json.dumps({"spec": {"lifecycle": {"suspend": suspend}}})
        path = f"{TRAININGJOBS.format(ns=namespace)}/{name}"
        return JobInfo.from_object(self._call("PATCH", path, content=body, headers=MERGE).json())

    def _lines(self, path: str, follow: bool) -> Iterator[str]:
        """A streamed log, line by line (follow: until the server ends it)."""
        try:
            with self.http.stream("GET", path, params={"follow": str(follow).lower()}, timeout=None) as r:
                if r.status_code >= 400:
                    r.read()
                    check(r)
                yield from r.iter_lines()
        except httpx.TransportError as e:
            raise errors.Unavailable(f"cannot reach {self.what} at {self.http.base_url}: {e}") from None

    @abc.abstractmethod
    def logs(self, name: str, namespace: str, follow: bool = False) -> Iterator[str]: ...

    def close(self) -> None:
        self.http.close()
