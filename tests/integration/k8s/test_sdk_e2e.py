"""End to end over REST: `kubetrain submit --backend rest` -> the API (TokenReview, SubjectAccessReview) -> a
TrainingJob -> the real operator -> a RayJob the KubeRay stand-in runs on a real local Ray -> `kubetrain wait
--backend rest` sees Succeeded."""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import yaml
from harness import TJ, Operator

from tests.conftest import ROOT
from tests.integration.conftest import TINY

pytestmark = pytest.mark.ray
NS = "sdk-e2e"
TOKEN = "tok-e2e-user-0c7d"


def test_submit_over_rest_then_wait_until_succeeded(
    emulator, api, kubeconfig, api_server, start_kuberay, tmp_path
):
    emulator.add_user(TOKEN, "e2e-user", ("ml-team",))
    emulator.allow(
        "group:ml-team",
        NS,
        ("create", "get", "list", "patch", "delete"),
        ("trainingjobs", "trainingjobs/logs"),
    )
    api.http.post(
        "/api/v1/namespaces", json={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}
    )
    operator = Operator(kubeconfig, [NS], tmp_path / "operator.log").start()
    start_kuberay(NS)
    try:
        job = copy.deepcopy(TINY)
        job["metadata"] = {"name": "rest-e2e", "labels": {"team": "ml"}}
        job["spec"]["checkpoint"]["storage"] = str(tmp_path / "runs")
        job["spec"]["tracking"] = {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"}
        job["spec"]["env"] = [{"name": "KUBETRAIN_PROGRESS_INTERVAL", "value": "0.5"}]
        (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
        env = {**os.environ, "KUBETRAIN_API_URL": api_server.url, "KUBETRAIN_API_TOKEN": TOKEN}

        def kubetrain(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-m", "kubetrain.cli.main", *args, "--backend", "rest", "-n", NS],
                                  cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)  # fmt: skip

        r = kubetrain("submit", str(tmp_path / "job.yaml"))
        assert r.returncode == 0 and r.stdout.strip() == "trainingjob/rest-e2e created", r.stderr
        stored = api.get(TJ, NS, "rest-e2e")
        assert stored["metadata"]["annotations"]["kubetrain.dev/created-by"] == "e2e-user"
        r = kubetrain("wait", "rest-e2e", "--timeout", os.environ.get("E2E_WAIT", "600"), timeout=660)
        rayjobs = [
            o.get("status") for o in emulator.objects("ray.io/v1/rayjobs") if o["metadata"]["namespace"] == NS
        ]
        assert r.returncode == 0, (
            f"{r.stdout}\n{r.stderr}\nRayJob status: {rayjobs}\n{(tmp_path / 'operator.log').read_text()[-3000:]}"
        )
        assert r.stdout.strip() == "trainingjob/rest-e2e Succeeded"
        r = kubetrain("get", "rest-e2e")
        assert r.stdout.splitlines()[1].split()[:2] == ["rest-e2e", "Succeeded"]
        status = api.get(TJ, NS, "rest-e2e")["status"]
        assert status["progress"]["step"] == TINY["spec"]["training"]["max_steps"]
    finally:
        operator.stop()
