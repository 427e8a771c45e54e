"""The control image (Dockerfile target `control`) runs the operator: built with buildah, started from inside it.

The image is built by images/build.sh (buildah, vfs storage, chroot isolation, cached layers: a rerun with
unchanged sources costs seconds; a fresh machine builds the local Debian base first, about a minute) and
`kubetrain operator` runs inside it with `buildah run` on the host network against the emulator, where it
reconciles one TrainingJob into its RayJob.
"""

from __future__ import annotations

import os
import signal
import subprocess
import uuid

import httpx
import pytest
from harness import RJ, TJ, Operator, eventually, trainingjob

from tests.buildah import ENV as BUILDAH_ENV
from tests.buildah import build, buildah, needs_buildah

NS = "image"
IMAGE = "ghcr.io/kubetrain/kubetrain-control:0.1.0"
pytestmark = needs_buildah


@pytest.fixture(scope="module")
def control_image() -> str:
    build("control")
    return IMAGE


class ImageOperator(Operator):
    """The operator as `kubetrain operator` inside a working container of the image (host network)."""

    def __init__(self, image: str, *args):
        super().__init__(*args)
        self.image, self.container = image, f"kubetrain-test-{uuid.uuid4().hex[:8]}"

    def start(self) -> ImageOperator:
        buildah("from", "--name", self.container, self.image)
        env = {"KUBECONFIG": "/run/kube/config", "KUBETRAIN_METRICS_ADDR": "127.0.0.1",
               "KUBETRAIN_HEALTH_ADDR": "127.0.0.1", "KUBETRAIN_WATCH_TIMEOUT": "60"}  # fmt: skip
        args = ["buildah", "run", "--network", "host", "--user", "1000:1000",
                "--volume", f"{self.kubeconfig}:/run/kube/config:ro"]  # fmt: skip
        for key, value in env.items():
            args += ["--env", f"{key}={value}"]
        args += [self.container, "--", "kubetrain", "operator", "--metrics-port", str(self.metrics_port)]
        args += ["--health-port", str(self.health_port)]
        for ns in self.namespaces:
            args += ["--namespace", ns]
        self.proc = subprocess.Popen(
            args,
            env=BUILDAH_ENV,
            stdout=self.log_path.open("a"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        eventually(self.ready, timeout=120)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # buildah run and the operator inside it
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=20)
        subprocess.run(["buildah", "rm", self.container], env=BUILDAH_ENV, capture_output=True)


def test_the_image_has_no_training_stack_and_runs_as_non_root(control_image):
    config = buildah("inspect", "--type", "image", "--format", "{{.OCIv1.Config.User}}", control_image).stdout
    assert config.strip() == "1000:1000"
    labels = buildah(
        "inspect", "--type", "image", "--format", "{{.OCIv1.Config.Labels}}", control_image
    ).stdout
    for key in ("org.opencontainers.image.version:0.1.0", "org.opencontainers.image.revision:",
                "org.opencontainers.image.source:"):  # fmt: skip
        assert key in labels
    container = buildah("from", control_image).stdout.strip()
    try:
        probe = "import importlib.util as u; print([m for m in ('torch', 'ray', 'transformers', 'mlflow') if u.find_spec(m)])"
        assert buildah("run", container, "--", "python", "-c", probe).stdout.strip() == "[]"
    finally:
        buildah("rm", container)


def test_the_operator_in_the_image_reconciles_a_trainingjob(control_image, kubeconfig, api, tmp_path):
    op = ImageOperator(control_image, kubeconfig, [NS], tmp_path / "operator.log")
    try:
        op.start()
        assert api.create(TJ, NS, trainingjob("boxed", NS)).status_code == 201
        rayjob = eventually(lambda: api.get(RJ, NS, "boxed"))
        assert rayjob["metadata"]["ownerReferences"][0]["uid"] == api.get(TJ, NS, "boxed")["metadata"]["uid"]
        assert rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0][
            "image"
        ] == ("ghcr.io/kubetrain/kubetrain:0.1.0")

        def pending():
            """the TrainingJob reaches phase Pending"""
            return ((api.get(TJ, NS, "boxed") or {}).get("status") or {}).get("phase") == "Pending"

        eventually(pending)
        assert "kubetrain_" in op.metrics()
    finally:
        op.stop()


def test_the_api_in_the_image_serves_with_the_charts_command(control_image, kubeconfig, tmp_path):
    """`kubetrain api --backend kube` (the chart's API Deployment) starts in the image and answers /healthz."""
    from harness import free_port

    port = free_port()
    container = buildah("from", control_image).stdout.strip()
    args = ["buildah", "run", "--network", "host", "--user", "1000:1000", "--env", "KUBECONFIG=/run/kube/config",
            "--volume", f"{kubeconfig}:/run/kube/config:ro", container, "--",
            "kubetrain", "api", "--backend", "kube", "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    log = tmp_path / "api.log"
    proc = subprocess.Popen(
        args, env=BUILDAH_ENV, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
    )
    try:

        def healthy():
            """the API answers /healthz"""
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        eventually(healthy, timeout=120)
        assert "serving kube backend" in log.read_text()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        buildah("rm", container)
