"""A TrainingJob end to end on "KubeRay": real kubectl, the real operator, the KubeRay stand-in running Ray for real.

The stand-in (tests/kuberay/standin.py) executes each RayJob as KubeRay v1.7.0 would: a RayCluster object, Ray nodes
from the head and worker groups, the entrypoint run with the head pod's environment (Secrets resolved, the spec
ConfigMap as a file), RayJob status written with KubeRay's fields. Data and checkpoints live on a real S3 API
(moto) and reach the job only through secret_key_ref; MLflow is an sqlite store read back with MlflowClient.
"""

from __future__ import annotations

import base64
import copy
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from typing import Any

import psutil
import pytest
import yaml
from harness import RC, RJ, TJ, Api, Operator, eventually

from tests.conftest import ROOT
from tests.integration.conftest import TINY

KUBECTL = shutil.which("kubectl")
pytestmark = [pytest.mark.ray, pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")]
NS = "e2e"
ACCESS_KEY, SECRET_KEY = "e2e-access-key", "e2e-secret-value-never-in-a-spec"


@dataclass
class Env:
    """Everything a test here needs: kubectl, the emulator's API, the stand-in, S3 and the MLflow store."""

    kubectl: Any
    api: Api
    kuberay: Any
    s3: Any
    bucket: str
    mlflow_uri: str
    tmp: Any

    def job(self, name: str, **overrides: Any) -> dict[str, Any]:
        """The tiny from-config job of tests/integration/conftest.py, with data and checkpoints on S3."""
        from kubetrain.spec import set_path

        body = copy.deepcopy(TINY)
        body["metadata"] = {"name": name, "namespace": NS}
        spec = body["spec"]
        spec["data"].update(train=f"s3://{self.bucket}/data/train.jsonl",
                            validation=f"s3://{self.bucket}/data/validation.jsonl")  # fmt: skip
        spec["checkpoint"]["storage"] = f"s3://{self.bucket}/runs"
        spec["tracking"] = {"tracking_uri": self.mlflow_uri, "experiment": "e2e"}
        spec["lifecycle"].update(ttl_seconds_after_success=3600, ttl_seconds_after_failure=3600)
        spec["env"] = [
            {"name": "AWS_ENDPOINT_URL", "value": self.s3.url},
            {"name": "AWS_DEFAULT_REGION", "value": "us-east-1"},
            {
                "name": "AWS_ACCESS_KEY_ID",
                "secret_key_ref": {"name": "s3-credentials", "key": "access_key_id"},
            },
            {"name": "AWS_SECRET_ACCESS_KEY", "secret_key_ref": {"name": "s3-credentials", "key": "secret"}},
            {"name": "KUBETRAIN_PROGRESS_INTERVAL", "value": "0.5"},
        ]
        for path, value in overrides.items():
            set_path(body, path.replace("__", "."), value)
        return body

    def apply(self, body: dict[str, Any]) -> None:
        out = self.kubectl("apply", "-f", "-", input=yaml.safe_dump(body)).stdout
        assert f"trainingjob.kubetrain.dev/{body['metadata']['name']} created" in out

    def status(self, name: str) -> dict[str, Any]:
        return (self.api.get(TJ, NS, name) or {}).get("status") or {}

    def rayjob(self, name: str) -> dict[str, Any] | None:
        return self.api.get(RJ, NS, name)

    def wait_phase(self, name: str, phase: str, timeout: int = 300) -> None:
        """Until the TrainingJob reaches `phase` (failing at once if it ends otherwise); then `kubectl wait` agrees."""

        def reached() -> bool:
            status = self.status(name)
            if status.get("phase") in ("Succeeded", "Failed") and status["phase"] != phase:
                raise AssertionError(f"{name} ended {status['phase']}: {status.get('message')}")
            return status.get("phase") == phase

        eventually(reached, timeout=timeout, interval=0.2)
        self.kubectl(
            "wait", "-n", NS, f"tj/{name}", f"--for=jsonpath={{.status.phase}}={phase}", "--timeout=30s"
        )

    def s3_keys(self, prefix: str) -> list[str]:
        from pyarrow import fs

        s3 = fs.S3FileSystem(access_key=ACCESS_KEY, secret_key=SECRET_KEY, region="us-east-1",
                             endpoint_override=self.s3.url)  # fmt: skip
        infos = s3.get_file_info(
            fs.FileSelector(f"{self.bucket}/{prefix}", recursive=True, allow_not_found=True)
        )
        return [i.path.removeprefix(f"{self.bucket}/") for i in infos]


@pytest.fixture(scope="module")
def e2e(kubeconfig, api, start_kuberay, s3_bucket, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    cache = tmp / "kubectl-cache"

    def kubectl(*args: str, input: str | None = None, ok: bool = True) -> subprocess.CompletedProcess:
        env = {**os.environ, "KUBECONFIG": str(kubeconfig), "HOME": str(cache)}
        r = subprocess.run([KUBECTL, "--cache-dir", str(cache), *args], input=input, capture_output=True, text=True,
                           env=env, cwd=ROOT, timeout=300)  # fmt: skip
        if ok:
            assert r.returncode == 0, f"kubectl {' '.join(args)}: {r.stderr}"
        return r

    server, bucket = s3_bucket
    # (`kubectl apply`, not `kubectl create`: the emulator speaks JSON, and `create` sends core kinds as protobuf)
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-credentials", "namespace": NS},
              "type": "Opaque", "data": {"access_key_id": base64.b64encode(ACCESS_KEY.encode()).decode(),
                                         "secret": base64.b64encode(SECRET_KEY.encode()).decode()}}  # fmt: skip
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}
    kubectl("apply", "-f", "-", input=yaml.safe_dump_all([namespace, secret]))
    _upload_data(server, bucket)
    operator = Operator(kubeconfig, [NS], tmp / "operator.log").start()
    standin = start_kuberay(NS)
    yield Env(kubectl, api, standin, server, bucket, f"sqlite:///{tmp}/mlflow.db", tmp)
    operator.stop()


def _upload_data(server: Any, bucket: str) -> None:
    """The dates data set onto S3 with the test's own credentials (moto accepts any; the job gets its own)."""
    from pyarrow import fs

    s3 = fs.S3FileSystem(access_key=ACCESS_KEY, secret_key=SECRET_KEY, region="us-east-1",
                         endpoint_override=server.url)  # fmt: skip
    for split in ("train", "validation"):
        with s3.open_output_stream(f"{bucket}/data/{split}.jsonl") as out:
            out.write((ROOT / f"jobs/data/dates/{split}.jsonl").read_bytes())


def _alive(pids: set[int]) -> set[int]:
    out = set()
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.add(pid)
        except psutil.NoSuchProcess:
            pass
    return out


def _table_row(e2e: Env, name: str) -> dict[str, str]:
    """`kubectl get tj NAME` as {column: cell}, cut at the header's column starts (cells may be blank)."""
    header, row = e2e.kubectl("get", "tj", name, "-n", NS).stdout.splitlines()[:2]
    starts = [m.start() for m in re.finditer(r"\S+", header)]
    bounds = zip(starts, [*starts[1:], None], strict=True)
    return {header[a:b].strip(): row[a:b].strip() for a, b in bounds}


def test_standin_starts_ray_nodes_as_kuberay_would():
    """`ray start` flags from a rendered sweep RayJob, as KubeRay's pod builder derives them (pod.go at v1.7.0):
    num-cpus from the CPU limit rounded up (Quantity.Value), memory in bytes, num-gpus from nvidia.com/gpu, and
    --resources as bash reads KubeRay's quoted JSON."""
    from kubetrain.render import render
    from kubetrain.spec import validate_job
    from tests.kuberay.localray import quantity_value, ray_start_flags, ray_start_params

    body = copy.deepcopy(TINY)
    body["spec"]["resources"] = {"workers": 1, "cpus_per_worker": 0.5, "gpus_per_worker": 1}
    body["spec"]["sweep"] = {"parameters": {"training.learning_rate": {"type": "grid", "values": [0.01, 0.02]}},
                             "algorithm": "grid", "max_concurrent": 2}  # fmt: skip
    cluster = render(validate_job(body))[1]["spec"]["rayClusterSpec"]
    head, workers = cluster["headGroupSpec"], cluster["workerGroupSpecs"][0]
    assert ray_start_flags(ray_start_params(head)) == [
        f"--memory={quantity_value(head['template']['spec']['containers'][0]['resources']['limits']['memory'])}",
        "--num-cpus=1",
        '--resources={"kubetrain_trial_driver": 2}',
    ]
    assert ray_start_flags(ray_start_params(workers)) == [
        "--memory=8589934592",
        "--num-cpus=1",
        "--num-gpus=1",
    ]
    assert workers["replicas"] == 2  # one worker pod per Ray Train worker of each concurrent trial
    assert [quantity_value(q) for q in ("500m", "2", "1.5", "8Gi", "1e3")] == [1, 2, 2, 8 * 2**30, 1000]


def test_apply_suspended_resume_train_succeed_with_s3_secrets_mlflow_and_cleanup(e2e):
    """apply suspended (no cluster) -> resume -> Running -> progress and a metric in `kubectl get tj` -> Succeeded;
    MLflow has the run; S3 has the checkpoints; credentials only by reference; ttl_seconds_after_success removes
    the RayCluster and its Ray processes."""
    started = time.monotonic()
    name = "e2e-train"
    e2e.apply(e2e.job(name, spec__training__max_steps=12, spec__lifecycle__ttl_seconds_after_success=2,
                      spec__lifecycle__suspend=True))  # fmt: skip
    e2e.wait_phase(name, "Suspended")
    eventually(lambda: (e2e.rayjob(name) or {}).get("status", {}).get("jobDeploymentStatus") == "Suspended")
    assert not [c for c in e2e.api.list(RC, NS) if c["metadata"]["name"].startswith(f"{name}-")]
    e2e.kubectl(
        "patch", "tj", name, "-n", NS, "--type=merge", "-p", '{"spec":{"lifecycle":{"suspend":false}}}'
    )
    e2e.wait_phase(name, "Running")
    rayjob = e2e.rayjob(name)
    cluster = rayjob["status"]["rayClusterName"]
    assert cluster.startswith(f"{name}-") and len(cluster) == len(name) + 6
    assert rayjob["status"]["dashboardURL"] == f"{cluster}-head-svc.{NS}.svc.cluster.local:8265"
    owner = e2e.api.get(RC, NS, cluster)["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("RayJob", name, rayjob["metadata"]["uid"])

    def progress_shown() -> dict[str, str] | None:
        """kubectl get tj shows progress and a headline metric while the phase is Running"""
        row = _table_row(e2e, name)
        assert row["PHASE"] in ("Running", "Succeeded"), row
        if row["PHASE"] == "Running" and row["PROGRESS"] not in ("", "<none>", "0") and "=" in row["METRIC"]:
            return row
        assert row["PHASE"] == "Running", f"finished before progress was seen: {row}"
        return None

    row = eventually(progress_shown, timeout=240, interval=0.2)
    assert 0 < float(row["PROGRESS"]) <= 100 and row["WORKERS"] == "2"

    e2e.wait_phase(name, "Succeeded")
    status = e2e.status(name)
    assert status["progress"]["step"] == 12 and status["progress"]["percent"] == 100
    rayjob = e2e.rayjob(name)["status"]
    assert (rayjob["jobDeploymentStatus"], rayjob["jobStatus"]) == ("Complete", "SUCCEEDED")
    assert (rayjob["succeeded"], rayjob["failed"]) == (1, 0)
    assert rayjob["message"] == "Job finished successfully."

    from mlflow.tracking import MlflowClient

    run = MlflowClient(tracking_uri=e2e.mlflow_uri).get_run(status["mlflowRunId"])
    assert run.info.status == "FINISHED"
    assert {"train_loss", "eval_loss", "learning_rate"} <= set(run.data.metrics), sorted(run.data.metrics)
    assert SECRET_KEY not in str(run.data.params) and ACCESS_KEY not in str(run.data.params)

    keys = e2e.s3_keys(f"runs/{name}")
    assert any("checkpoint" in k for k in keys), keys
    # credentials reached the job only by reference: in no object the operator or KubeRay wrote
    for kind in ("rayjob", "configmap", "raycluster", "tj"):
        text = e2e.kubectl("get", kind, "-n", NS, "-o", "yaml").stdout
        assert SECRET_KEY not in text and base64.b64encode(SECRET_KEY.encode()).decode() not in text, kind

    # clean-up by outcome: the RayCluster (and every Ray process of it) goes ttl_seconds_after_success after success
    pids = set()
    local = e2e.kuberay.cluster(NS, cluster)
    if local is not None:
        pids = local.pids()
    eventually(lambda: e2e.api.get(RC, NS, cluster) is None, timeout=60)
    assert e2e.status(name).get("clusterDeletionTime")
    eventually(lambda: not _alive(pids), timeout=60)
    print(f"\n[wall] apply->succeeded->cleaned: {time.monotonic() - started:.1f}s")


def test_rejected_rayjob_is_validation_failed_with_kuberays_message(e2e):
    """The stand-in refuses what KubeRay's controller refuses (validation.go), with its status and message."""
    from tests.kuberay.validation import validate_rayjob

    rayjob = {
        "apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": "bad-deletion", "namespace": NS},
        "spec": {"entrypoint": "python -c 'print(1)'", "shutdownAfterJobFinishes": True,
                 "deletionStrategy": {"deletionRules": [{"policy": "DeleteCluster",
                                                         "condition": {"jobStatus": "FAILED", "ttlSeconds": 0}}]},
                 "rayClusterSpec": {"headGroupSpec": {"rayStartParams": {}, "template": {"spec": {
                     "containers": [{"name": "ray-head", "image": "rayproject/ray:2.60.0"}]}}}}},
    }  # fmt: skip
    expected = validate_rayjob(rayjob)
    assert expected and "mutually exclusive" in expected
    assert e2e.api.create(RJ, NS, rayjob).status_code == 201
    status = eventually(lambda: (e2e.rayjob("bad-deletion") or {}).get("status"), timeout=30)
    assert status == {
        "jobDeploymentStatus": "ValidationFailed",
        "reason": "ValidationFailed",
        "message": expected,
    }
    assert not [c for c in e2e.api.list(RC, NS) if c["metadata"]["name"].startswith("bad-deletion")]
    e2e.api.delete(RJ, NS, "bad-deletion")


def test_retry_resumes_from_the_latest_checkpoint_on_a_new_cluster(e2e):
    """backoff_limit 1: attempt 1 dies after a checkpoint; attempt 2 runs on a NEW cluster and resumes from S3."""
    started = time.monotonic()
    name = "e2e-retry"
    marker = e2e.tmp / "fault-once"
    e2e.apply(e2e.job(name, spec__lifecycle__backoff_limit=1, spec__lifecycle__max_worker_failures=0,
                      spec__env=e2e.job(name)["spec"]["env"] + [
                          {"name": "KUBETRAIN_FAULT_AT_STEP", "value": "4"},
                          {"name": "KUBETRAIN_FAULT_MARKER", "value": str(marker)}]))  # fmt: skip
    e2e.wait_phase(name, "Running")
    first, first_job = (e2e.rayjob(name)["status"][k] for k in ("rayClusterName", "jobId"))

    def retried() -> dict | None:
        """KubeRay started attempt 2 on a new RayCluster"""
        status = (e2e.rayjob(name) or {}).get("status") or {}
        new = status.get("rayClusterName")
        return status if new and new != first and status.get("failed") == 1 else None

    second = eventually(retried, timeout=240)
    assert marker.exists()  # attempt 1 really died at its fault
    assert e2e.api.get(RC, NS, first) is None  # Retrying deleted the first cluster
    e2e.wait_phase(name, "Succeeded")
    status = e2e.status(name)
    assert status["attempt"] == 2
    resumed = status["progress"]["resumed_from_step"]
    assert resumed in (2, 4), status["progress"]  # the latest checkpoint attempt 1 wrote to S3 before dying
    assert status["progress"]["step"] == TINY["spec"]["training"]["max_steps"]
    rayjob = e2e.rayjob(name)["status"]
    assert (rayjob["failed"], rayjob["succeeded"], rayjob["jobStatus"]) == (1, 1, "SUCCEEDED")
    assert (
        rayjob["rayClusterName"] == second["rayClusterName"] and rayjob["jobId"] != first_job
    )  # a new submission
    print(f"\n[wall] retry (2 attempts): {time.monotonic() - started:.1f}s")


def test_suspend_while_running_resume_then_delete_while_running(e2e):
    """Suspended while it trains: its cluster and Ray processes go; resumed: it goes on from its checkpoint on a
    new cluster; deleted while it trains: the RayJob and RayCluster go (garbage collection), so do its processes."""
    started = time.monotonic()
    name = "e2e-delete"
    e2e.apply(e2e.job(name, spec__training__max_steps=400, spec__resources__workers=1))
    e2e.wait_phase(name, "Running")
    eventually(lambda: (e2e.status(name).get("progress") or {}).get("step", 0) > 2, timeout=240)

    def registered() -> bool:
        """Ray Train has registered a checkpoint (its snapshot is in storage): what a later run resumes from.
        One uploaded but not yet registered (the controller polls every 2 s) is not committed, and a suspend
        in that window starts over, as with Ray Train anywhere."""
        return f"runs/{name}/checkpoint_manager_snapshot.json" in e2e.s3_keys(f"runs/{name}")

    eventually(registered, timeout=120)
    first = e2e.rayjob(name)["status"]["rayClusterName"]
    pids = e2e.kuberay.cluster(NS, first).pids()
    assert len(pids) > 4  # head and worker nodes (GCS, raylets, ...), the driver and its Train worker

    suspend = '{"spec":{"lifecycle":{"suspend":%s}}}'
    e2e.kubectl("patch", "tj", name, "-n", NS, "--type=merge", "-p", suspend % "true")
    e2e.wait_phase(name, "Suspended")
    eventually(lambda: e2e.rayjob(name)["status"]["jobDeploymentStatus"] == "Suspended")
    assert e2e.api.get(RC, NS, first) is None
    eventually(lambda: not _alive(pids), timeout=60)

    resumed_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    e2e.kubectl("patch", "tj", name, "-n", NS, "--type=merge", "-p", suspend % "false")
    e2e.wait_phase(name, "Running")
    second = eventually(lambda: e2e.rayjob(name)["status"].get("rayClusterName"))
    assert second != first

    def training_again() -> dict:
        """the resumed job reports training steps from its new cluster"""
        progress = e2e.status(name).get("progress") or {}
        return progress if progress.get("updated", "") > resumed_at and progress.get("step", 0) > 0 else {}

    progress = eventually(training_again, timeout=240)
    assert progress.get("resumed_from_step", 0) >= 2, progress  # from its checkpoint, not from scratch
    pids = e2e.kuberay.cluster(NS, second).pids()

    e2e.kubectl("delete", "tj", name, "-n", NS)
    assert e2e.rayjob(name) is None and e2e.api.get(RC, NS, second) is None  # garbage collection
    eventually(lambda: not _alive(pids), timeout=60)
    print(f"\n[wall] suspend while running, resume, delete while running: {time.monotonic() - started:.1f}s")


def test_active_deadline_fails_without_retry(e2e):
    """activeDeadlineSeconds passed: Failed with KubeRay's DeadlineExceeded, and no retry despite backoff_limit."""
    name = "e2e-deadline"
    e2e.apply(e2e.job(name, spec__lifecycle__active_deadline_seconds=1, spec__lifecycle__backoff_limit=1,
                      spec__resources__workers=1))  # fmt: skip
    e2e.wait_phase(name, "Failed", timeout=120)
    status = e2e.rayjob(name)["status"]
    assert (status["jobDeploymentStatus"], status["reason"], status["failed"]) == (
        "Failed",
        "DeadlineExceeded",
        1,
    )
    assert status["message"].startswith("The RayJob has passed the activeDeadlineSeconds. StartTime: ")
    assert status["message"].endswith(". ActiveDeadlineSeconds: 1")
    assert e2e.status(name).get("attempt", 1) == 1
    e2e.kubectl("delete", "tj", name, "-n", NS)


def test_sweep_runs_its_trials_at_once_on_its_cluster(e2e):
    """max_concurrent 2: the RayJob's cluster has room for both trials, and they overlap in time."""
    started = time.monotonic()
    name = "e2e-sweep"
    sweep = {"parameters": {"training.learning_rate": {"type": "grid", "values": [0.01, 0.02]}},
             "algorithm": "grid", "max_concurrent": 2}  # fmt: skip
    e2e.apply(e2e.job(name, spec__sweep=sweep, spec__resources__workers=1, spec__training__max_steps=6))
    e2e.wait_phase(name, "Succeeded", timeout=400)
    rayjob = e2e.rayjob(name)
    workers = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    assert workers["replicas"] == 2

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=e2e.mlflow_uri)
    (parent,) = client.search_runs(
        [client.get_experiment_by_name("e2e").experiment_id],
        f"tags.`kubetrain.kind` = 'sweep' and tags.`kubetrain.job` = '{name}'",
    )
    trials = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert sorted(t.data.tags["kubetrain.trial.status"] for t in trials) == ["completed", "completed"]
    # the TrainingJob shows the sweep, not one trial: trials finished of all, the best value, the parent run
    status = e2e.status(name)
    assert status["mlflowRunId"] == parent.info.run_id
    assert (status["progress"]["step"], status["progress"]["total_steps"], status["progress"]["percent"]) == (
        2,
        2,
        100.0,
    )
    best = min(t.data.metrics["eval_loss"] for t in trials)
    assert status["progress"]["metrics"]["eval_loss"] == pytest.approx(best, rel=1e-5)
    (a, b) = sorted((t.info.start_time, t.info.end_time) for t in trials)
    assert b[0] < a[1], f"trials ran one after the other: {a} then {b}"
    # ... on the RayJob's own cluster: the trial drivers ran on its head pod (their files are under its root)
    cluster = rayjob["status"]["rayClusterName"]
    assert parent.data.tags["kubetrain.best_checkpoint"].startswith(
        str(e2e.kuberay.workdir / NS / cluster / f"{cluster}-head")
    )
    print(f"\n[wall] sweep of 2 concurrent trials: {time.monotonic() - started:.1f}s")


def test_failure_keeps_its_cluster_for_ttl_seconds_after_failure(e2e):
    """A failed job's RayCluster stays for debugging (ttl_seconds_after_failure 3600) while a success's would go."""
    started = time.monotonic()
    name = "e2e-fails"
    body = e2e.job(name, spec__resources__workers=1, spec__lifecycle__ttl_seconds_after_success=0)
    body["spec"]["data"]["train"] = f"s3://{e2e.bucket}/data/missing.jsonl"
    e2e.apply(body)
    e2e.wait_phase(name, "Failed")
    rayjob = e2e.rayjob(name)["status"]
    assert (rayjob["jobDeploymentStatus"], rayjob["jobStatus"], rayjob["reason"]) == (
        "Failed",
        "FAILED",
        "AppFailed",
    )
    assert rayjob["message"].startswith("Job entrypoint command failed with exit code 2")  # the run failed
    cluster = rayjob["rayClusterName"]
    time.sleep(3)  # well past the success TTL (0 s): the failure TTL (3600 s) applies
    assert e2e.api.get(RC, NS, cluster) is not None and not e2e.status(name).get("clusterDeletionTime")
    assert _alive(e2e.kuberay.cluster(NS, cluster).pids())
    e2e.kubectl("delete", "tj", name, "-n", NS)
    print(f"\n[wall] failure keeps its cluster: {time.monotonic() - started:.1f}s")
