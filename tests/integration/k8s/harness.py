"""Helpers for the Kubernetes tests: a client of the emulator's HTTP API, the operator as a subprocess, polling."""

from __future__ import annotations

import copy
import os
import pathlib
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx
import yaml

from tests.conftest import ROOT, SHARED

KUBERAY_RAYJOBS = SHARED / "kuberay" / "ray.io_rayjobs.yaml"
KUBERAY_RAYCLUSTERS = SHARED / "kuberay" / "ray.io_rayclusters.yaml"
RC = "ray.io/v1/rayclusters"
TJ = "kubetrain.dev/v1alpha1/trainingjobs"
RJ = "ray.io/v1/rayjobs"
MERGE = {"Content-Type": "application/merge-patch+json"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def eventually(check: Callable[[], Any], timeout: float = 90.0, interval: float = 0.05) -> Any:
    """Poll until check() returns something truthy; the timeout only bounds a broken run."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {check.__doc__ or check}")
        time.sleep(interval)


class Api:
    """A thin test client over the emulator's real HTTP API."""

    def __init__(self, url: str):
        self.http = httpx.Client(base_url=url, timeout=30)

    @staticmethod
    def path(key: str, ns: str, name: str = "", sub: str = "") -> str:
        group_version, plural = key.rsplit("/", 1)
        root = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
        return f"{root}/namespaces/{ns}/{plural}" + (f"/{name}" if name else "") + (f"/{sub}" if sub else "")

    def get(self, key: str, ns: str, name: str) -> dict | None:
        r = self.http.get(self.path(key, ns, name))
        return None if r.status_code == 404 else r.raise_for_status().json()

    def list(self, key: str, ns: str) -> list[dict]:
        return self.http.get(self.path(key, ns)).raise_for_status().json()["items"]

    def create(self, key: str, ns: str, obj: dict) -> httpx.Response:
        return self.http.post(self.path(key, ns), json=obj)

    def patch(self, key: str, ns: str, name: str, body: dict, sub: str = "") -> dict:
        return (
            self.http.patch(self.path(key, ns, name, sub), json=body, headers=MERGE).raise_for_status().json()
        )

    def delete(self, key: str, ns: str, name: str) -> httpx.Response:
        return self.http.delete(self.path(key, ns, name))

    def table(self, key: str, ns: str) -> dict:
        accept = {"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"}
        return self.http.get(self.path(key, ns), headers=accept).raise_for_status().json()

    def play_kuberay(self, ns: str, name: str, **status: Any) -> dict:
        """What the KubeRay operator would do: write the RayJob's status."""
        return self.patch(RJ, ns, name, {"status": status}, sub="status")


class Operator:
    """`python -m kubetrain.control` as a subprocess against the emulator."""

    def __init__(self, kubeconfig: pathlib.Path, namespaces: list[str], log: pathlib.Path):
        self.kubeconfig, self.namespaces, self.log_path = kubeconfig, namespaces, log
        self.metrics_port = free_port()
        self.health_port = free_port()
        self.proc: subprocess.Popen | None = None

    def start(self) -> Operator:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "KUBETRAIN_METRICS_PORT": str(self.metrics_port),
               "KUBETRAIN_METRICS_ADDR": "127.0.0.1",
            "KUBETRAIN_HEALTH_ADDR": "127.0.0.1", "KUBETRAIN_WATCH_TIMEOUT": "60"}  # fmt: skip
        args = [sys.executable, "-m", "kubetrain.control", "--health-port", str(self.health_port)]
        for ns in self.namespaces:
            args += ["--namespace", ns]
        self.proc = subprocess.Popen(
            args, env=env, cwd=ROOT, stdout=self.log_path.open("a"), stderr=subprocess.STDOUT
        )
        eventually(self.ready, timeout=120)
        return self

    def ready(self) -> bool:
        """the operator serves metrics"""
        assert self.proc is not None and self.proc.poll() is None, (
            f"operator exited:\n{self.log_path.read_text()[-3000:]}"
        )
        try:
            return httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def health(self) -> int:
        return httpx.get(f"http://127.0.0.1:{self.health_port}/healthz", timeout=5).status_code

    def metrics(self) -> str:
        return httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


def trainingjob(name: str, ns: str, path: str = "jobs/k8s/smollm2-lora.yaml", **spec: Any) -> dict:
    body = yaml.safe_load((ROOT / path).read_text())
    body = copy.deepcopy(body)
    body["metadata"] = {"name": name, "namespace": ns}
    body["spec"].update(spec)
    return body
