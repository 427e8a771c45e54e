"""`kubetrain api` without a cluster: it serves the local backend on loopback (real uvicorn, real HTTP)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import httpx
import pytest
import yaml

from kubetrain.client import JobFailed, NotFound, TrainingClient
from tests.conftest import ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def local_api(tmp_path):
    port = free_port()
    log = (tmp_path / "api.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "kubetrain.cli.main", "api", "--backend", "local", "--port", str(port),
                             "--root", ".kubetrain"], cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            assert proc.poll() is None, (tmp_path / "api.log").read_text()
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_rest_over_the_local_backend(local_api, tmp_path):
    job = yaml.safe_load((ROOT / "jobs/quickstart.yaml").read_text())
    job["spec"]["data"]["train"] = "missing.jsonl"  # fails fast, before Ray starts
    with TrainingClient("rest", url=local_api) as tc:
        name = tc.submit(job)
        assert (tmp_path / ".kubetrain" / "jobs" / "default" / name / "state.json").is_file()
        with pytest.raises(JobFailed, match="missing.jsonl"):
            tc.wait(name, timeout=120, poll=0.1)
        assert any("missing.jsonl" in line for line in tc.logs(name))
        r = httpx.get(
            f"{local_api}/apis/kubetrain.dev/v1alpha1/namespaces/default/trainingjobs/{name}/status"
        )
        assert r.json()["status"]["reason"] == "InvalidSpec"
        tc.delete(name)
        with pytest.raises(NotFound):
            tc.get(name)


def test_local_mode_listens_on_loopback_only(tmp_path):
    r = subprocess.run([sys.executable, "-m", "kubetrain.cli.main", "api", "--backend", "local", "--host", "0.0.0.0"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 1 and "listens on loopback only" in r.stderr and "Traceback" not in r.stderr
