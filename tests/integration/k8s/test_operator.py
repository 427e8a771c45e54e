"""The real operator (subprocess) against the emulator; the tests play KubeRay by writing rayjobs/status."""

from __future__ import annotations

import pytest
from harness import RC, RJ, TJ, Operator, eventually, trainingjob

from kubetrain.runtime.run.status_reporter import KubeStatusReporter

NS = "ops"


@pytest.fixture(scope="module")
def operator(kubeconfig, tmp_path_factory):
    op = Operator(kubeconfig, [NS], tmp_path_factory.mktemp("operator") / "operator.log").start()
    yield op
    op.stop()


def status(api, name, ns=NS):
    return (api.get(TJ, ns, name) or {}).get("status") or {}


def phase_is(api, name, phase, ns=NS):
    def check():
        return status(api, name, ns) if status(api, name, ns).get("phase") == phase else None

    check.__doc__ = f"{ns}/{name} reaches phase {phase}"
    return eventually(check)


def conditions(st):
    return {c["type"]: c for c in st.get("conditions", [])}


def test_a_job_runs_to_success_and_its_status_mirrors_the_rayjob(api, operator):
    assert api.create(TJ, NS, trainingjob("life", NS)).status_code == 201
    rayjob = eventually(lambda: api.get(RJ, NS, "life"))
    job = api.get(TJ, NS, "life")
    assert rayjob["metadata"]["ownerReferences"][0]["uid"] == job["metadata"]["uid"]
    assert (
        api.get("v1/configmaps", NS, "life-spec")["metadata"]["ownerReferences"][0]["uid"]
        == job["metadata"]["uid"]
    )
    pending = phase_is(api, "life", "Pending")
    assert pending["rayJobName"] == "life" and conditions(pending)["Ready"]["status"] == "True"

    api.play_kuberay(NS, "life", jobDeploymentStatus="Initializing", rayClusterName="life-raycluster-abc12")
    api.play_kuberay(NS, "life", jobDeploymentStatus="Running", jobStatus="RUNNING",
                     dashboardURL="life-raycluster-abc12-head-svc.ops.svc:8265", startTime="2026-01-01T00:00:00Z")  # fmt: skip
    running = phase_is(api, "life", "Running")
    assert running["rayClusterName"] == "life-raycluster-abc12"
    assert running["dashboardURL"] == "http://life-raycluster-abc12-head-svc.ops.svc:8265"
    assert running["startTime"] == "2026-01-01T00:00:00Z" and running["observedGeneration"] == 1
    assert {t: c["status"] for t, c in conditions(running).items()} == {
        "Ready": "True", "Running": "True", "Suspended": "False", "Succeeded": "False", "Failed": "False"}  # fmt: skip

    # the runtime reports progress through the status subresource; the operator keeps it
    reporter = KubeStatusReporter(api.http.base_url.__str__(), NS, "life", token="t", min_interval=0)
    reporter.report({"step": 50, "total_steps": 200, "percent": 25.0, "eta_seconds": 300.0,
                     "metrics": {"loss": 1.25, "eval_loss": 1.5}, "mlflow_run_id": "abc123",
                     "mlflow_url": "http://mlflow/#/runs/abc123"})  # fmt: skip
    assert reporter.sent == 1
    api.play_kuberay(
        NS, "life", jobDeploymentStatus="Complete", jobStatus="SUCCEEDED", endTime="2026-01-01T01:00:00Z"
    )
    done = phase_is(api, "life", "Succeeded")
    assert done["completionTime"] == "2026-01-01T01:00:00Z"
    assert done["progress"]["step"] == 50 and done["progress"]["metrics"] == {"loss": 1.25, "eval_loss": 1.5}
    assert done["metric"] == "eval_loss=1.5" and done["mlflowRunId"] == "abc123"
    assert (
        conditions(done)["Succeeded"]["status"] == "True" and conditions(done)["Running"]["status"] == "False"
    )

    # printer columns, as the apiserver would print them (kubectl get trainingjobs)
    table = api.table(TJ, NS)
    names = [c["name"] for c in table["columnDefinitions"] if not c["priority"]]  # -o wide shows the rest
    row = next(r["cells"] for r in table["rows"] if r["cells"][0] == "life")
    assert names == ["Name", "Phase", "Progress", "Workers", "Metric", "Age"]
    assert row[:5] == ["life", "Succeeded", 25.0, 2, "eval_loss=1.5"]
    assert row[6:] == [1, None]  # Attempt, Resumed-From

    # a finished job stays finished, whatever the RayJob does next
    api.play_kuberay(NS, "life", jobDeploymentStatus="Running", jobStatus="RUNNING")
    api.create(TJ, NS, trainingjob("after-life", NS))  # let the operator make a full round
    phase_is(api, "after-life", "Pending")
    assert status(api, "life")["phase"] == "Succeeded"


def test_a_failure_carries_kuberays_reason_and_message(api, operator):
    api.create(TJ, NS, trainingjob("fails", NS))
    eventually(lambda: api.get(RJ, NS, "fails"))
    api.play_kuberay(NS, "fails", jobDeploymentStatus="Failed", jobStatus="FAILED", reason="AppFailed",
                     message="Job entrypoint command failed with exit code 1")  # fmt: skip
    failed = phase_is(api, "fails", "Failed")
    assert (failed["reason"], failed["message"]) == (
        "AppFailed",
        "Job entrypoint command failed with exit code 1",
    )
    assert conditions(failed)["Failed"]["reason"] == "AppFailed"
    reasons = {e["reason"] for e in api.list("v1/events", NS) if e["involvedObject"]["name"] == "fails"}
    assert {"Created", "AppFailed"} <= reasons


def test_a_spec_the_models_reject_fails_with_invalid_spec_and_creates_nothing(api, operator):
    body = trainingjob("invalid", NS)
    body["spec"]["peft"]["target_modules"] = 7  # the CRD keeps unions open; the model says no
    assert api.create(TJ, NS, body).status_code == 201
    failed = phase_is(api, "invalid", "Failed")
    assert failed["reason"] == "InvalidSpec" and failed["message"].startswith("spec.peft.target_modules")
    event = eventually(lambda: [e for e in api.list("v1/events", NS)
                                if e["involvedObject"]["name"] == "invalid" and e["reason"] == "InvalidSpec"])  # fmt: skip
    assert event[0]["type"] == "Warning" and "spec.peft.target_modules" in event[0]["message"]
    assert api.get(RJ, NS, "invalid") is None and api.get("v1/configmaps", NS, "invalid-spec") is None


def test_suspend_and_resume_through_the_spec(api, operator):
    api.create(TJ, NS, trainingjob("pause", NS))
    eventually(lambda: api.get(RJ, NS, "pause"))
    api.play_kuberay(NS, "pause", jobDeploymentStatus="Running", jobStatus="RUNNING")
    phase_is(api, "pause", "Running")

    api.patch(TJ, NS, "pause", {"spec": {"lifecycle": {"suspend": True}}})
    eventually(lambda: api.get(RJ, NS, "pause")["spec"]["suspend"] is True)
    api.play_kuberay(NS, "pause", jobDeploymentStatus="Suspended", jobStatus="")
    suspended = phase_is(api, "pause", "Suspended")
    assert conditions(suspended)["Suspended"]["status"] == "True"

    api.patch(TJ, NS, "pause", {"spec": {"lifecycle": {"suspend": False}}})
    eventually(lambda: api.get(RJ, NS, "pause")["spec"]["suspend"] is False)
    api.play_kuberay(NS, "pause", jobDeploymentStatus="Running", jobStatus="RUNNING")
    resumed = phase_is(api, "pause", "Running")
    assert resumed["observedGeneration"] == 3
    reasons = [e["reason"] for e in api.list("v1/events", NS) if e["involvedObject"]["name"] == "pause"]
    assert "Suspended" in reasons and "Resumed" in reasons


def test_deleting_the_job_takes_the_rayjob_with_it(api, operator):
    api.create(TJ, NS, trainingjob("gone", NS))
    eventually(lambda: api.get(RJ, NS, "gone"))
    assert api.delete(TJ, NS, "gone").status_code == 200
    # the emulator's garbage collector follows ownerReferences, as the apiserver's does
    assert api.get(RJ, NS, "gone") is None and api.get("v1/configmaps", NS, "gone-spec") is None


def finish(api, name, outcome, cluster, **lifecycle):
    """Create a job with these TTLs, then play KubeRay: a RayCluster, a finished attempt with it."""
    body = trainingjob(name, NS)
    body["spec"]["lifecycle"].update(lifecycle)
    api.create(TJ, NS, body)
    eventually(lambda: api.get(RJ, NS, name))
    api.create(RC, NS, {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": cluster}})
    deployment, job_status = ("Complete", "SUCCEEDED") if outcome == "success" else ("Failed", "FAILED")
    api.play_kuberay(NS, name, jobDeploymentStatus=deployment, jobStatus=job_status, rayClusterName=cluster,
                     **({"succeeded": 1} if outcome == "success" else {"failed": 1}))  # fmt: skip


def test_the_cluster_goes_after_its_outcomes_ttl_and_a_failed_one_stays_for_debugging(api, operator):
    finish(
        api,
        "keep-failed",
        "failure",
        "keep-failed-aaaaa",
        ttl_seconds_after_success=0,
        ttl_seconds_after_failure=3600,
    )
    finish(
        api,
        "drop-done",
        "success",
        "drop-done-bbbbb",
        ttl_seconds_after_success=2,
        ttl_seconds_after_failure=3600,
    )
    assert api.get(RJ, NS, "drop-done")["spec"]["ttlSecondsAfterFinished"] == 3600  # KubeRay's backstop
    done = phase_is(api, "drop-done", "Succeeded")
    assert api.get(RC, NS, "drop-done-bbbbb") is not None and not done.get(
        "clusterDeletionTime"
    )  # TTL running
    eventually(lambda: api.get(RC, NS, "drop-done-bbbbb") is None, timeout=30)
    deleted = eventually(lambda: status(api, "drop-done").get("clusterDeletionTime"))
    assert deleted >= done["completionTime"] and status(api, "drop-done")["attempt"] == 1
    failed = phase_is(api, "keep-failed", "Failed")
    assert api.get(RC, NS, "keep-failed-aaaaa") is not None and not failed.get("clusterDeletionTime")
    assert api.get(RJ, NS, "drop-done") is not None  # the RayJob stays as the record of the run


def test_a_failed_attempt_with_retries_left_is_retried_not_failed(api, operator):
    body = trainingjob("retried", NS)
    body["spec"]["lifecycle"]["backoff_limit"] = 1
    api.create(TJ, NS, body)
    eventually(lambda: api.get(RJ, NS, "retried"))
    api.play_kuberay(NS, "retried", jobDeploymentStatus="Running", jobStatus="RUNNING")
    assert phase_is(api, "retried", "Running")["attempt"] == 1
    api.play_kuberay(NS, "retried", jobDeploymentStatus="Retrying", jobStatus="FAILED", failed=1)
    assert phase_is(api, "retried", "Queued")["attempt"] == 2
    api.play_kuberay(NS, "retried", jobDeploymentStatus="Running", jobStatus="RUNNING")
    assert phase_is(api, "retried", "Running")["attempt"] == 2
    api.play_kuberay(NS, "retried", jobDeploymentStatus="Complete", jobStatus="SUCCEEDED", succeeded=1)
    assert phase_is(api, "retried", "Succeeded")["attempt"] == 2


def test_metrics_and_health(api, operator):
    assert operator.health() == 200
    phase_is(api, "life", "Succeeded")
    text = operator.metrics()
    samples = {
        line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines() if line and line[0] != "#"
    }
    assert samples['kubetrain_trainingjobs{phase="Succeeded"}'] >= 1
    assert samples['kubetrain_trainingjobs{phase="Failed"}'] >= 2
    assert samples['kubetrain_reconcile_total{trigger="trainingjob"}'] > 0
    assert samples['kubetrain_reconcile_total{trigger="rayjob"}'] > 0
    assert samples["kubetrain_reconcile_seconds_count"] > 0
    assert samples["kubetrain_reconcile_errors_total"] == 0
    assert samples["kubetrain_rayjobs_created_total"] >= 5
