"""Where the API keeps jobs, as async calls: the Kubernetes API directly (async HTTP, objects passed through
as the cluster returns them), or any SDK backend (the local one) on a worker thread."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import aiohttp
from starlette.concurrency import run_in_threadpool

from .. import API_VERSION, KIND
from ..client import errors
from ..client.base import Backend, label_selector
from ..client.http import MERGE, TRAININGJOBS, check
from ..client.kube import Connection, KubeBackend
from ..spec import TrainingJob


class Answer:
    """Status and body of one Kubernetes API answer (what client.http.check reads)."""

    def __init__(self, status: int, content: bytes, reason: str = ""):
        self.status_code, self.content, self.reason_phrase = status, content, reason

    @property
    def text(self) -> str:
        return self.content.decode(errors="replace")

    def json(self) -> Any:
        return json.loads(self.content)


class KubeStore:
    """TrainingJobs through the Kubernetes API with the API's own credentials (one write path).

    aiohttp (as the operator's control/kube.py) rather than httpx: it costs a fraction per request."""

    def __init__(self, conn: Connection):
        self.conn = conn
        self.sync = KubeBackend(conn)  # log streaming only
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """One pooled keep-alive session for every call, created on the server's event loop."""
        if self._session is None or self._session.closed:
            opts, verify = self.conn.options(), self.conn.verify
            ssl = verify if not isinstance(verify, bool) else (None if verify else False)
            auth = aiohttp.BasicAuth(*self.conn.auth) if self.conn.auth and not self.conn.token_file else None
            self._session = aiohttp.ClientSession(
                base_url=opts["base_url"] + "/", headers=opts["headers"], auth=auth,
                connector=aiohttp.TCPConnector(limit=64, ssl=ssl), timeout=aiohttp.ClientTimeout(total=30),
                cookie_jar=aiohttp.DummyCookieJar(),  # the API server sets none; nothing to keep per call
            )  # fmt: skip
        return self._session

    async def call(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
                   params: dict[str, str] | None = None) -> Answer:  # fmt: skip
        data = json.dumps(body) if body is not None and not isinstance(body, str) else body
        hdrs = {"Content-Type": "application/json", **(headers or {})} if data is not None else headers
        if self.conn.token_file:  # in a pod: the service account token as the kubelet last rotated it
            hdrs = {**(hdrs or {}), "Authorization": self.conn.token_file.header()}
        try:
            async with self.session.request(
                method, path.lstrip("/"), data=data, headers=hdrs, params=params
            ) as r:
                answer = Answer(r.status, await r.read(), r.reason or "")
        except asyncio.TimeoutError:
            raise errors.Unavailable("the Kubernetes API did not answer in time") from None
        except aiohttp.ClientError as e:
            raise errors.Unavailable(f"cannot reach the Kubernetes API: {type(e).__name__}") from None
        check(answer)  # type: ignore[arg-type]
        return answer

    async def _call(self, method: str, path: str, json: Any = None, content: Any = None, headers: Any = None,
                    params: Any = None) -> Answer:  # fmt: skip
        return await self.call(method, path, json if json is not None else content, headers, params)

    async def create(self, job: TrainingJob, namespace: str, user: str) -> bytes:
        obj = job.model_dump(mode="json", exclude_unset=True, exclude={"status"})
        obj.update(apiVersion=API_VERSION, kind=KIND)
        meta = obj["metadata"]
        meta["namespace"] = namespace
        for key in ("uid", "resourceVersion", "generation", "creationTimestamp", "managedFields"):
            meta.pop(key, None)
        meta["annotations"] = {**meta.get("annotations", {}), "kubetrain.dev/created-by": user}
        return (await self._call("POST", TRAININGJOBS.format(ns=namespace), json=obj)).content

    async def get(self, name: str, namespace: str) -> bytes:
        return (await self._call("GET", f"{TRAININGJOBS.format(ns=namespace)}/{name}")).content

    async def list(self, namespace: str, labels: dict[str, str]) -> bytes:
        params = {"labelSelector": label_selector(labels)} if labels else {}
        return (await self._call("GET", TRAININGJOBS.format(ns=namespace), params=params)).content

    async def delete(self, name: str, namespace: str) -> None:
        await self._call("DELETE", f"{TRAININGJOBS.format(ns=namespace)}/{name}")

    async def set_suspended(self, name: str, namespace: str, suspend: bool) -> bytes:
        body = json.dumps({"spec": {"lifecycle": {"suspend": suspend}}})
        path = f"{TRAININGJOBS.format(ns=namespace)}/{name}"
        return (await self._call("PATCH", path, content=body, headers=MERGE)).content

    def logs(self, name: str, namespace: str, follow: bool) -> Iterator[str]:
        return self.sync.logs(name, namespace, follow)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        self.sync.close()


class BackendStore:
    """Any SDK backend (the local one, without a cluster), called on a worker thread."""

    def __init__(self, backend: Backend):
        self.backend = backend

    async def create(self, job: TrainingJob, namespace: str, user: str) -> bytes:
        return _dump((await run_in_threadpool(self.backend.submit, job, namespace)).to_object())

    async def get(self, name: str, namespace: str) -> bytes:
        return _dump((await run_in_threadpool(self.backend.get, name, namespace)).to_object())

    async def list(self, namespace: str, labels: dict[str, str]) -> bytes:
        jobs = await run_in_threadpool(self.backend.list, namespace, labels)
        return _dump({"apiVersion": API_VERSION, "kind": f"{KIND}List", "metadata": {}, "items": [j.to_object() for j in jobs]})  # fmt: skip

    async def delete(self, name: str, namespace: str) -> None:
        await run_in_threadpool(self.backend.delete, name, namespace)

    async def set_suspended(self, name: str, namespace: str, suspend: bool) -> bytes:
        return _dump(
            (await run_in_threadpool(self.backend.set_suspended, name, namespace, suspend)).to_object()
        )

    def logs(self, name: str, namespace: str, follow: bool) -> Iterator[str]:
        return self.backend.logs(name, namespace, follow)

    async def close(self) -> None:
        await run_in_threadpool(self.backend.close)


def _dump(obj: Any) -> bytes:
    return json.dumps(obj).encode()
