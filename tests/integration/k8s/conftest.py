"""Kubernetes test fixtures: the API emulator (kmock + shims) with our CRD and KubeRay's, a kubeconfig, operators."""

from __future__ import annotations

import pathlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from emulator import RunningEmulator  # noqa: E402
from harness import KUBERAY_RAYCLUSTERS, KUBERAY_RAYJOBS, Api, Operator  # noqa: E402


@pytest.fixture(scope="session")
def emulator() -> Iterator[RunningEmulator]:
    if not KUBERAY_RAYJOBS.is_file():
        pytest.skip(
            f"KubeRay CRDs not found at {KUBERAY_RAYJOBS} (../shared/kuberay absent): the emulator needs the RayJob CRD"
        )
    from kubetrain.schema.crd import crd

    emu = RunningEmulator().start()
    emu.register_crd(crd())
    fast = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # KubeRay's CRDs are megabytes of YAML
    emu.register_crd(yaml.load(KUBERAY_RAYJOBS.read_text(), Loader=fast))
    emu.register_crd(yaml.load(KUBERAY_RAYCLUSTERS.read_text(), Loader=fast))
    yield emu
    emu.stop()


@pytest.fixture(scope="session")
def kubeconfig(emulator: RunningEmulator, tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("kube") / "config"
    path.write_text(emulator.kubeconfig())
    return path


@pytest.fixture(scope="session")
def api(emulator: RunningEmulator) -> Api:
    return Api(emulator.url)


@pytest.fixture
def start_operator(kubeconfig: pathlib.Path, tmp_path: pathlib.Path) -> Iterator[Callable[..., Operator]]:
    started: list[Operator] = []

    def start(*namespaces: str) -> Operator:
        op = Operator(kubeconfig, list(namespaces), tmp_path / f"operator-{len(started)}.log").start()
        started.append(op)
        return op

    yield start
    for op in started:
        op.stop()


class ApiServer:
    """`kubetrain api --backend kube` under uvicorn on 127.0.0.1, against the emulator (its own credentials
    from the kubeconfig; callers' tokens checked by the emulator's TokenReview/SubjectAccessReview)."""

    def __init__(
        self, kubeconfig: pathlib.Path, log: pathlib.Path, backend: str = "kube", root: str = ".kubetrain"
    ):
        import os
        import subprocess

        from harness import free_port

        from tests.conftest import ROOT

        self.port, self.log = free_port(), log
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "KUBECONFIG": str(kubeconfig), "PYTHONUNBUFFERED": "1"}
        args = ["-m", "kubetrain.cli.main", "api", "--host", "127.0.0.1", "--port", str(self.port)]
        self.proc = subprocess.Popen([sys.executable, *args, "--backend", backend, "--root", root], env=env, cwd=ROOT,
                                     stdout=log.open("ab"), stderr=subprocess.STDOUT)  # fmt: skip

    def ready(self) -> bool:
        """the API answers /readyz"""
        import httpx

        assert self.proc.poll() is None, f"kubetrain api exited:\n{self.log.read_text()[-3000:]}"
        try:
            return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except Exception:
                self.proc.kill()
                self.proc.wait(timeout=10)


@pytest.fixture(scope="session")
def api_server(kubeconfig: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    from harness import eventually

    server = ApiServer(kubeconfig, tmp_path_factory.mktemp("api") / "api.log")
    try:
        eventually(server.ready, timeout=60)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def start_kuberay(
    emulator: RunningEmulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., Any]]:
    """Factory: the KubeRay stand-in (tests/kuberay/standin.py) running RayJobs of the given namespaces for real.

    Stopped with the module: every Ray process it started goes with it. A test fails on any reconcile error.
    """
    from tests.kuberay.standin import KubeRayStandIn

    started: list[KubeRayStandIn] = []

    def start(*namespaces: str) -> KubeRayStandIn:
        standin = KubeRayStandIn(emulator.url, tmp_path_factory.mktemp("kuberay"), list(namespaces) or None)
        started.append(standin.start())
        return standin

    yield start
    for standin in started:
        standin.stop()
    errors = [e for s in started for e in s.errors]
    assert not errors, "KubeRay stand-in errors:\n" + "\n".join(errors)


@pytest.fixture(scope="module")
def s3_bucket(s3_server: Any) -> tuple[Any, str]:
    """A bucket on the session's S3 API (moto server on 127.0.0.1, tests/s3.py): (server, bucket name)."""
    name = "kubetrain-e2e"
    s3_server.create_bucket(name)
    return s3_server, name
