"""How the kube backend and the API's store talk to a cluster, against a small recording HTTP server: the
service account token follows its file when the kubelet rotates it; logs come from the newest submitter pod."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import kopf
import pytest

from kubetrain.api.store import KubeStore
from kubetrain.client import errors
from kubetrain.client import kube as kube_module
from kubetrain.client.kube import Connection, KubeBackend, TokenFile

TJ = "/apis/kubetrain.dev/v1alpha1/namespaces/team/trainingjobs"
PODS = "/api/v1/namespaces/team/pods"
JOB = {"apiVersion": "kubetrain.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "tiny", "namespace": "team"},
       "spec": {"model": {"name_or_path": "m"}, "data": {"train": "d.jsonl"}},
       "status": {"phase": "Running", "rayJobName": "tiny-ray"}}  # fmt: skip
SUBMITTERS = [  # KubeRay's submitter Job retried once: the newer pod has the log
    {"metadata": {"name": "tiny-ray-old", "creationTimestamp": "2026-01-01T10:00:00Z"}},
    {"metadata": {"name": "tiny-ray-new", "creationTimestamp": "2026-01-01T10:05:00Z"}},
]


class FakeApiServer:
    """Answers a few Kubernetes API paths and records (path, query, Authorization) of every request."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, str], str]] = []
        self.pods: list[dict[str, Any]] = SUBMITTERS
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                url = urllib.parse.urlsplit(self.path)
                query = dict(urllib.parse.parse_qsl(url.query))
                fake.seen.append((url.path, query, self.headers.get("Authorization", "")))
                if url.path == f"{TJ}/tiny":
                    self.answer(200, json.dumps(JOB))
                elif url.path == PODS and query.get("labelSelector") == "job-name=tiny-ray":
                    self.answer(200, json.dumps({"kind": "PodList", "items": fake.pods}))
                elif url.path == f"{PODS}/tiny-ray-new/log":
                    self.answer(200, "step 1 loss 2.0\nstep 2 loss 1.5\n", "text/plain")
                else:
                    self.answer(404, json.dumps({"kind": "Status", "code": 404, "reason": "NotFound",
                                                 "message": f"{url.path} not found"}))  # fmt: skip

            def answer(self, code: int, body: str, ctype: str = "application/json") -> None:
                data = body.encode()
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def tokens(self) -> list[str]:
        return [auth for _, _, auth in self.seen]


@pytest.fixture
def fake() -> Iterator[FakeApiServer]:
    server = FakeApiServer()
    yield server
    server.server.shutdown()
    server.server.server_close()


def rotate(path: Any, token: str) -> None:
    """As the kubelet does: write the new token beside the old one, then swap it in (a new inode)."""
    fresh = path.with_name(path.name + ".new")
    fresh.write_text(token + "\n")
    os.replace(fresh, path)


def test_the_service_account_token_is_read_again_when_the_kubelet_rotates_it(fake, tmp_path):
    token = tmp_path / "token"
    rotate(token, "sa-token-1")
    conn = Connection(fake.url, {}, token_file=TokenFile(str(token), period=0))
    sdk = KubeBackend(conn)
    store = KubeStore(conn)

    async def api_get() -> None:
        await store.get("tiny", "team")

    loop = asyncio.new_event_loop()
    try:
        sdk.get("tiny", "team")
        loop.run_until_complete(api_get())
        rotate(token, "sa-token-2")
        sdk.get("tiny", "team")
        loop.run_until_complete(api_get())
        token.write_text("")  # mid-write: the last token is kept, not an empty header
        sdk.get("tiny", "team")
        loop.run_until_complete(store.close())
    finally:
        loop.close()
    assert fake.tokens() == ["Bearer sa-token-1"] * 2 + ["Bearer sa-token-2"] * 3


def test_the_token_file_is_looked_at_once_per_period(tmp_path):
    token = tmp_path / "token"
    rotate(token, "first")
    tf = TokenFile(str(token), period=3600)
    rotate(token, "second")
    assert tf.header() == "Bearer first"  # within the period: no stat, no read
    tf.period = 0
    assert tf.header() == "Bearer second"


def test_a_missing_token_file_is_a_clear_error_at_start(tmp_path):
    with pytest.raises(errors.Unavailable, match="service account token"):
        TokenFile(str(tmp_path / "absent"))


def test_in_a_pod_the_connection_follows_the_service_account_token_file(fake, tmp_path, monkeypatch):
    token = tmp_path / "token"
    rotate(token, "sa-token-1")

    def in_cluster(**_: Any) -> kopf.ConnectionInfo:  # what kopf answers in a pod (it read the file once)
        return kopf.ConnectionInfo(server=fake.url, token="sa-token-1", default_namespace="team")

    monkeypatch.setattr(kopf, "login_with_service_account", in_cluster)
    monkeypatch.setattr(kube_module, "SERVICE_ACCOUNT_TOKEN", str(token))
    conn = kube_module.connection()
    assert conn.token_file is not None and "Authorization" not in conn.headers
    conn.token_file.period = 0
    rotate(token, "sa-token-2")
    KubeBackend(conn).get("tiny", "team")
    assert fake.tokens() == ["Bearer sa-token-2"]


def test_kube_logs_stream_the_newest_submitter_pod(fake):
    backend = KubeBackend(server=fake.url, token="user-token")
    assert list(backend.logs("tiny", "team")) == ["step 1 loss 2.0", "step 2 loss 1.5"]
    assert list(backend.logs("tiny", "team", follow=True)) == ["step 1 loss 2.0", "step 2 loss 1.5"]
    logs = [(path, query) for path, query, _ in fake.seen if path.endswith("/log")]
    assert logs == [
        (f"{PODS}/tiny-ray-new/log", {"follow": "false"}),
        (f"{PODS}/tiny-ray-new/log", {"follow": "true"}),
    ]
    fake.pods = []
    with pytest.raises(errors.NotFound, match="submitter pod of RayJob tiny-ray"):
        list(backend.logs("tiny", "team"))
