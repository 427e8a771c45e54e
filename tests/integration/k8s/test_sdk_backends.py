"""The SDK's kube and rest backends against the emulator (rest through the real `kubetrain api` under uvicorn):
the same verbs, the same typed results, the same errors."""

from __future__ import annotations

import pytest
from harness import TJ

from kubetrain.client import (
    AlreadyExists,
    Forbidden,
    Invalid,
    JobFailed,
    NotFound,
    TrainingClient,
    Unauthorized,
    WaitTimeout,
)
from kubetrain.client.kube import KubeBackend
from kubetrain.spec import load_job

NS = "sdk"
TOKEN = "tok-sdk-user-5d1c"


@pytest.fixture(scope="module", params=["kube", "rest"])
def tc(request, emulator, api_server):
    emulator.add_user(TOKEN, "sdk-user")
    emulator.allow("sdk-user", NS, ("*",), ("*",))
    if request.param == "kube":
        client = TrainingClient(KubeBackend(server=emulator.url, token="emulator-token"), namespace=NS)
    else:
        client = TrainingClient("rest", namespace=NS, url=api_server.url, token=TOKEN)
    client.kind = request.param
    yield client
    client.close()


def test_submit_get_list_suspend_resume_delete(tc, api):
    name = tc.submit(
        "jobs/k8s/smollm2-lora.yaml", set={"spec.training.learning_rate": 1e-3}, name=f"life-{tc.kind}"
    )
    assert name == f"life-{tc.kind}"
    stored = api.get(TJ, NS, name)
    assert stored["spec"]["training"]["learning_rate"] == 1e-3
    info = tc.get(name)
    assert (info.name, info.namespace, info.phase, info.labels) == (name, NS, "Pending", {"team": "nlp"})
    assert name in [j.name for j in tc.list(labels={"team": "nlp"})]
    assert name not in [j.name for j in tc.list(labels={"team": "vision"})]
    tc.suspend(name)
    assert api.get(TJ, NS, name)["spec"]["lifecycle"]["suspend"] is True
    tc.resume(name)
    assert api.get(TJ, NS, name)["spec"]["lifecycle"]["suspend"] is False
    with pytest.raises(AlreadyExists):
        tc.submit("jobs/k8s/smollm2-lora.yaml", name=name)
    tc.delete(name)
    assert api.get(TJ, NS, name) is None
    with pytest.raises(NotFound):
        tc.get(name)
    with pytest.raises(NotFound):
        tc.delete(name)


def test_invalid_specs_name_the_field(tc):
    with pytest.raises(Invalid) as e:
        tc.submit(
            "jobs/k8s/smollm2-lora.yaml", set={"spec.training.learning_rate": -1}, name=f"bad-{tc.kind}"
        )
    assert [(p.path, p.message) for p in e.value.problems] == [
        ("spec.training.learning_rate", "got -1: Input should be greater than 0")
    ]
    lines = open("jobs/k8s/smollm2-lora.yaml").read().splitlines()
    assert (
        "learning_rate" in lines[e.value.problems[0].line - 1]
    )  # the line in the file, as `kubetrain validate` says


def test_wait_follows_the_status_the_operator_writes(tc, api):
    name = tc.submit("jobs/k8s/smollm2-lora.yaml", name=f"wait-{tc.kind}")
    with pytest.raises(WaitTimeout):
        tc.wait(name, timeout=0.3, poll=0.1)
    api.patch(
        TJ,
        NS,
        name,
        {"status": {"phase": "Running", "progress": {"step": 5, "total_steps": 10, "percent": 50.0}}},
        sub="status",
    )
    info = tc.wait(name, until="Running", timeout=30, poll=0.1)
    assert (info.status.progress.step, info.status.progress.percent) == (5, 50.0)
    api.patch(TJ, NS, name, {"status": {"phase": "Succeeded"}}, sub="status")
    assert tc.wait(name, timeout=30, poll=0.1, progress=True).phase == "Succeeded"
    name = tc.submit("jobs/k8s/smollm2-lora.yaml", name=f"fail-{tc.kind}")
    api.patch(TJ, NS, name, {"status": {"phase": "Failed", "message": "OOMKilled"}}, sub="status")
    with pytest.raises(JobFailed, match="OOMKilled"):
        tc.wait(name, timeout=30, poll=0.1)


def test_rest_refuses_without_rights(emulator, api_server):
    job = load_job(open("jobs/k8s/smollm2-lora.yaml").read())
    with TrainingClient("rest", namespace=NS, url=api_server.url) as anonymous:
        with pytest.raises(Unauthorized):
            anonymous.list()
    emulator.add_user("tok-outsider-9e", "outsider")
    with TrainingClient("rest", namespace=NS, url=api_server.url, token="tok-outsider-9e") as outsider:
        with pytest.raises(Forbidden, match='cannot create resource "trainingjobs"'):
            outsider.submit(job)
        with pytest.raises(Forbidden):
            outsider.get("anything")


def test_metrics_trials_and_best_read_the_jobs_mlflow_runs(tc, api, tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    name = tc.submit("jobs/sweeps/quickstart-lora-asha-tpe.yaml", name=f"sweep-{tc.kind}",
                     set={"spec.tracking.tracking_uri": uri, "spec.tracking.experiment": "sweeps"})  # fmt: skip
    mlflow = MlflowClient(tracking_uri=uri)
    exp = mlflow.create_experiment("sweeps")
    parent = mlflow.create_run(exp, run_name=name).info.run_id
    for step, loss in enumerate([0.9, 0.5, 0.4]):
        mlflow.log_metric(parent, "eval_loss", loss, step=step * 10)
    for trial, (lr, loss) in enumerate([(1e-3, 0.41), (3e-3, 0.28), (1e-2, 0.55)]):
        child = mlflow.create_run(
            exp, run_name=f"trial-{trial}", tags={"mlflow.parentRunId": parent}
        ).info.run_id
        mlflow.log_param(child, "spec.training.learning_rate", lr)
        mlflow.log_metric(child, "eval_loss", loss, step=20)
    # found by experiment and run name, as the runtime names the run; then by status.mlflowRunId
    assert tc.metrics(name) == {"eval_loss": [(0, 0.9), (10, 0.5), (20, 0.4)]}
    api.patch(TJ, NS, name, {"status": {"mlflowRunId": parent}}, sub="status")
    assert [t["name"] for t in sorted(tc.trials(name), key=lambda t: t["name"])] == [
        "trial-0",
        "trial-1",
        "trial-2",
    ]
    best = tc.best(name)
    assert (best["name"], best["params"]["spec.training.learning_rate"]) == ("trial-1", "0.003")
