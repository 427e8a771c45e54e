"""End to end with the real kubectl: install, apply the example jobs, wait on phases, reject, delete."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import yaml
from harness import RJ, TJ, Operator, eventually

from tests.conftest import ROOT

KUBECTL = shutil.which("kubectl")
pytestmark = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")
NS = "default"
# kubectl's default --validate=strict: the emulator's /openapi/v3 says it validates fields itself
# (fieldValidation), so kubectl leaves the check to it (422 from the CRD schema), as with a real apiserver.
APPLY = ["apply"]


@pytest.fixture(scope="module")
def kubectl(kubeconfig, tmp_path_factory):
    cache = tmp_path_factory.mktemp("kubectl-cache")

    def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
        env = {**os.environ, "KUBECONFIG": str(kubeconfig), "HOME": str(cache)}
        r = subprocess.run([KUBECTL, "--cache-dir", str(cache), *args], capture_output=True, text=True, env=env,
                           cwd=ROOT, timeout=120)  # fmt: skip
        if ok:
            assert r.returncode == 0, f"kubectl {' '.join(args)}: {r.stderr}"
        return r

    return run


@pytest.fixture(scope="module")
def operator(kubeconfig, tmp_path_factory):
    op = Operator(kubeconfig, [NS], tmp_path_factory.mktemp("operator") / "operator.log").start()
    yield op
    op.stop()


K8S_JOBS = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "jobs/k8s").glob("*.yaml"))


def test_install_apply_wait_get_reject_delete(kubectl, operator, api):
    out = kubectl(*APPLY, "-f", "manifests/").stdout
    assert "customresourcedefinition.apiextensions.k8s.io/trainingjobs.kubetrain.dev" in out
    assert "clusterrole.rbac.authorization.k8s.io/kubetrain-operator" in out
    assert "deployment.apps/kubetrain-operator" in out

    names = [yaml.safe_load((ROOT / p).read_text())["metadata"]["name"] for p in K8S_JOBS]
    out = kubectl(*APPLY, "-f", "jobs/k8s/").stdout
    for name in names:
        assert f"trainingjob.kubetrain.dev/{name} created" in out
    for name in names:
        kubectl("wait", f"tj/{name}", "--for=jsonpath={.status.phase}=Pending", "--timeout=120s")
        api.play_kuberay(NS, name, jobDeploymentStatus="Running", jobStatus="RUNNING",
                         rayClusterName=f"{name}-raycluster-x1", dashboardURL=f"{name}-head-svc:8265")  # fmt: skip
        kubectl("wait", f"tj/{name}", "--for=jsonpath={.status.phase}=Running", "--timeout=120s")
        kubectl("wait", f"tj/{name}", "--for=condition=Running", "--timeout=120s")

    table = kubectl("get", "trainingjobs").stdout.splitlines()
    assert table[0].split() == ["NAME", "PHASE", "PROGRESS", "WORKERS", "METRIC", "AGE"]
    assert any(line.split()[:2] == ["smollm2-lora", "Running"] for line in table[1:])
    assert (
        kubectl("get", "tj", "smollm2-lora", "-o", "jsonpath={.status.rayJobName}").stdout == "smollm2-lora"
    )
    assert kubectl("get", "kubetrain", "-o", "name").stdout.split() == [
        f"trainingjob.kubetrain.dev/{n}" for n in names
    ]
    got = yaml.safe_load(kubectl("get", "tj", "smollm2-lora", "-o", "yaml").stdout)["status"]
    assert got["dashboardURL"] == "http://smollm2-lora-head-svc:8265"
    assert {c["type"] for c in got["conditions"]} == {"Ready", "Running", "Suspended", "Succeeded", "Failed"}

    # field documentation comes from the pydantic models, through the CRD
    explained = kubectl("explain", "trainingjob.spec.training").stdout
    assert "Optimisation settings." in explained and "Peak learning rate." in explained
    assert (
        "Ray Train workers (data-parallel ranks)." in kubectl("explain", "tj.spec.resources.workers").stdout
    )

    # the apiserver (the CRD schema) rejects what is structurally wrong: 422, nothing stored
    bad = yaml.safe_load((ROOT / "jobs/k8s/smollm2-lora.yaml").read_text())
    bad["metadata"]["name"] = "bad"
    bad["spec"]["resources"]["workers"] = 0
    bad["spec"]["tracking"]["colour"] = "blue"
    r = subprocess.run([KUBECTL, "--kubeconfig", str(operator.kubeconfig), *APPLY, "-f", "-"], input=yaml.safe_dump(bad),
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 1
    assert (
        'TrainingJob "bad" is invalid' in r.stderr
        and "spec.resources.workers" in r.stderr
        and "colour" in r.stderr
    )
    assert api.get(TJ, NS, "bad") is None

    # immutable spec sections (CEL self == oldSelf), while lifecycle.suspend may change
    r = kubectl(
        "patch", "tj", "smollm2-lora", "--type=merge", "-p", '{"spec":{"training":{"max_steps":5}}}', ok=False
    )
    assert r.returncode == 1 and "spec.training" in r.stderr and "self == oldSelf" in r.stderr
    sweep = '{"spec":{"sweep":{"parameters":{"training.learning_rate":{"type":"loguniform","low":1e-5,"high":1e-3}}}}}'
    r = kubectl("patch", "tj", "smollm2-lora", "--type=merge", "-p", sweep, ok=False)
    assert r.returncode == 1 and "cannot be added or removed after creation" in r.stderr
    kubectl("patch", "tj", "smollm2-lora", "--type=merge", "-p", '{"spec":{"lifecycle":{"suspend":true}}}')
    eventually(lambda: api.get(RJ, NS, "smollm2-lora")["spec"]["suspend"] is True)

    # delete: the RayJob (and with it, in a cluster, the Ray cluster) goes too
    kubectl("delete", "tj", "smollm2-lora")
    assert api.get(RJ, NS, "smollm2-lora") is None
    assert "smollm2-lora" not in kubectl("get", "rayjobs", "-o", "name").stdout
