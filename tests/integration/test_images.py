"""The runtime and mlflow images work: a tiny job runs in the runtime image, the chart's MLflow command in the mlflow one.

(The control image is tested in k8s/test_control_image.py, against the Kubernetes emulator.)

What a RayJob's entrypoint runs in the Ray head, here in a buildah working container on the host network
(buildah, vfs storage, chroot isolation; images/build.sh with cached layers: seconds when nothing changed,
about 2.5 minutes for a full build here). The job trains a tiny model with 2 Ray Train workers as uid 1000
and tracks into MLflow on SQLite; the outputs are read back from the host.
"""

from __future__ import annotations

import copy
import os
import signal
import subprocess

import pytest
import yaml

from tests.buildah import ENV as BUILDAH_ENV
from tests.buildah import build, buildah, needs_buildah
from tests.conftest import ROOT
from tests.integration.conftest import TINY
from tests.integration.servers import free_port, running_postgres, wait_until

IMAGE = "ghcr.io/kubetrain/kubetrain:0.1.0"

pytestmark = [
    pytest.mark.ray,
    needs_buildah,
]


@pytest.fixture(scope="module")
def runtime_image() -> str:
    build("runtime")
    return IMAGE


def test_the_runtime_image_runs_a_tiny_job(runtime_image, tmp_path):
    from mlflow.tracking import MlflowClient

    work = tmp_path / "work"
    work.mkdir()
    work.chmod(0o777)  # the image runs as uid 1000
    job = copy.deepcopy(TINY)
    job["metadata"]["name"] = "boxed"
    job["spec"]["data"]["train"] = "/data/train.jsonl"
    job["spec"]["data"]["validation"] = "/data/validation.jsonl"
    job["spec"]["checkpoint"]["storage"] = "/work/runs"
    (work / "job.yaml").write_text(yaml.safe_dump(job))

    container = buildah("from", runtime_image).stdout.strip()
    try:
        # what KubeRay runs in the pod: `ray start` through bash (-c, or -lc with ENABLE_LOGIN_SHELL), wget probes
        for shell in ("-c", "-lc"):
            ray = buildah("run", container, "--", "/bin/bash", shell, "ray --version", check=False)
            assert ray.returncode == 0 and "2.60.0" in ray.stdout, (shell, ray.stdout, ray.stderr)
        assert buildah("run", container, "--", "wget", "--version", check=False).returncode == 0
        run = buildah(
            "run", "--network", "host", "--user", "1000:1000",
            "--volume", f"{ROOT / 'jobs/data/dates'}:/data:ro", "--volume", f"{work}:/work",
            container, "--", "python", "-m", "kubetrain.runtime", "/work/job.yaml", "--root", "/work/state",
            check=False,
        )  # fmt: skip
    finally:
        buildah("rm", container, check=False)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]

    final = work / "runs" / "boxed" / "final"
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= {
        p.name for p in final.iterdir()
    }
    client = MlflowClient(f"sqlite:///{work / 'state' / 'mlflow.db'}")
    [mrun] = client.search_runs([client.get_experiment_by_name("boxed").experiment_id])
    assert mrun.info.status == "FINISHED"
    assert mrun.data.tags["version.ray"] == "2.60.0" and mrun.data.tags["version.torch"].startswith("2.13.0")
    assert [m.step for m in client.get_metric_history(mrun.info.run_id, "train_loss")] == list(range(1, 9))


@pytest.fixture(scope="module")
def mlflow_image() -> str:
    build("mlflow")
    return "ghcr.io/kubetrain/kubetrain-mlflow:0.1.0"


def chart_mlflow_args() -> list[str]:
    """The MLflow container's command and args as the chart renders them by default."""
    helm = pytest.importorskip("helm_python")
    files = helm.Chart.load(ROOT / "charts" / "kubetrain").render(
        {}, name="kubetrain", namespace="kubetrain-system", is_install=True
    )
    docs = yaml.safe_load_all(files["kubetrain/templates/mlflow.yaml"])
    [deployment] = [d for d in docs if d and d["kind"] == "Deployment"]
    [c] = deployment["spec"]["template"]["spec"]["containers"]
    return c["command"] + c["args"]


def test_the_mlflow_image_serves_the_charts_command_on_postgresql(mlflow_image, tmp_path):
    """The chart's MLflow command in the mlflow image, on a real PostgreSQL, as the kubelet would start it."""
    import httpx
    from mlflow.tracking import MlflowClient

    args = chart_mlflow_args()
    port = free_port()
    artifacts = tmp_path / "mlartifacts"
    artifacts.mkdir()
    artifacts.chmod(0o777)
    with running_postgres() as pg:
        # what the kubelet does: $(DB_PASSWORD) from the Secret; the Service names resolve to this PostgreSQL
        backend = args[args.index("--backend-store-uri") + 1]
        backend = backend.replace("$(DB_PASSWORD)", pg.password)
        backend = backend.replace("kubetrain-postgresql.kubetrain-system.svc:5432", f"127.0.0.1:{pg.port}")
        args[args.index("--backend-store-uri") + 1] = backend
        args[args.index("--port") + 1] = str(port)
        args[args.index("--host") + 1] = "127.0.0.1"
        container = buildah("from", mlflow_image).stdout.strip()
        server = subprocess.Popen(
            ["buildah", "run", "--network", "host", "--volume", f"{artifacts}:/mlartifacts", container, "--", *args],
            env=BUILDAH_ENV, stdout=(tmp_path / "mlflow.log").open("w"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        try:
            url = f"http://127.0.0.1:{port}"

            def healthy() -> bool:
                assert server.poll() is None, (tmp_path / "mlflow.log").read_text()[-3000:]
                try:
                    return httpx.get(f"{url}/health", timeout=2).status_code == 200
                except httpx.HTTPError:
                    return False

            wait_until(healthy, 180, "the MLflow server in the image answers /health")
            # the Host headers jobs and port-forwards send are accepted; any other is refused
            search = "/api/2.0/mlflow/experiments/search?max_results=1"
            for host, code in [("kubetrain-mlflow.kubetrain-system.svc:5000", 200), ("localhost:5000", 200),
                               ("attacker.example.com", 403)]:  # fmt: skip
                assert httpx.get(url + search, headers={"Host": host}).status_code == code, host

            client = MlflowClient(f"http://localhost:{port}")
            experiment = client.create_experiment("image-check")
            run = client.create_run(experiment)
            note = tmp_path / "note.txt"
            note.write_text("served")
            client.log_artifact(run.info.run_id, str(note))
            client.log_metric(run.info.run_id, "loss", 0.5, step=1)
            assert [m.value for m in client.get_metric_history(run.info.run_id, "loss")] == [0.5]
            assert [p.read_text() for p in artifacts.rglob("note.txt")] == [
                "served"
            ]  # through --serve-artifacts
            assert pg.query(f"SELECT count(*) FROM runs WHERE run_uuid = '{run.info.run_id}'") == [(1,)]
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
            buildah("rm", container, check=False)
