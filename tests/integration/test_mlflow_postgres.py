"""MLflow as the chart runs it: `mlflow server --serve-artifacts` on a real PostgreSQL, real tiny runs against it.

PostgreSQL is Debian's package (initdb + postgres on 127.0.0.1, a fresh cluster in a temporary directory,
password authentication like the chart's); the tracking server runs with the flags of the chart's Deployment.
A real 2-worker training job and a 2-trial sweep write to it; everything is read back with MlflowClient
(and the tables in PostgreSQL). Last, the server stops in the middle of a run and comes back: the run
buffers the calls it could not make and delivers them, so every metric reaches the server.
"""

from __future__ import annotations

import json
import pathlib

import pytest

from tests.integration.servers import MlflowServer, running_postgres

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def postgres():
    with running_postgres() as pg:
        yield pg


@pytest.fixture(scope="module")
def mlflow_server(postgres, tmp_path_factory):
    server = MlflowServer(postgres.uri(), tmp_path_factory.mktemp("mlflow-server"))
    try:
        yield server.start()
    finally:
        server.stop()


def run_job(job, **kw):
    from kubetrain.runtime.run.job import run_job

    return run_job(
        job, local_root=str(pathlib.Path(job.spec.checkpoint.storage).parent / "root"), show=False, **kw
    )


def test_a_training_run_lands_in_mlflow_on_postgresql(ray_session, tiny_job, mlflow_server, postgres):
    from mlflow.tracking import MlflowClient

    job = tiny_job("pg-run", spec__tracking__tracking_uri=mlflow_server.url,
                   spec__tracking__register_model="tiny-dates")  # fmt: skip
    result = run_job(job)
    assert result.succeeded, result.error
    assert result.tracking_uri == mlflow_server.url  # no fallback to a local store

    client = MlflowClient(mlflow_server.url)
    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["spec.training.learning_rate"] == "0.01"
    assert run.data.tags["kubetrain.job"] == "pg-run"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == list(range(1, 9))
    assert [m.step for m in client.get_metric_history(run.info.run_id, "eval_loss")] == [0, 4, 8]
    # artifacts went through the server (--serve-artifacts) into its destination, not to a client path
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")
    assert {"trainingjob.yaml", "learning_curve.png", "model", "best_model"} <= {
        a.path for a in client.list_artifacts(run.info.run_id)
    }
    stored = list(mlflow_server.artifacts.rglob("adapter_config.json"))
    assert stored and any(result.mlflow_run_id in str(p) for p in stored)
    downloaded = pathlib.Path(client.download_artifacts(run.info.run_id, "model/adapter_config.json"))
    assert json.loads(downloaded.read_text())["r"] == 4
    # the model registry on PostgreSQL
    [version] = client.search_model_versions("name = 'tiny-dates'")
    assert version.run_id == run.info.run_id and version.source.endswith("/model")
    # and it is PostgreSQL that holds them
    assert postgres.query(f"SELECT status FROM runs WHERE run_uuid = '{run.info.run_id}'") == [("FINISHED",)]
    assert postgres.query(
        f"SELECT count(*) FROM metrics WHERE run_uuid = '{run.info.run_id}' AND key = 'train_loss'"
    ) == [(8,)]


def test_a_sweep_nests_its_trials_under_one_parent_run(ray_session, tiny_job, mlflow_server):
    from mlflow.tracking import MlflowClient

    from kubetrain.runtime.sweep.driver import run_sweep

    job = tiny_job(
        "pg-sweep",
        spec__tracking__tracking_uri=mlflow_server.url,
        spec__resources={"workers": 1, "cpus_per_worker": 0.5},
        spec__training__max_steps=4,
        spec__training__eval_every=2,
        spec__training__warmup_steps=0,
        spec__sweep={"algorithm": "grid", "max_concurrent": 1,
                     "parameters": {"training.learning_rate": {"type": "grid", "values": [0.01, 0.02]}}},
    )  # fmt: skip
    result = run_sweep(
        job, local_root=str(pathlib.Path(job.spec.checkpoint.storage).parent / "root"), show=False
    )
    assert result.succeeded, result.error

    client = MlflowClient(mlflow_server.url)
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED" and "best_eval_loss" in parent.data.metrics
    kids = client.search_runs(
        [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{result.parent_run_id}'"
    )
    assert sorted(float(k.data.params["spec.training.learning_rate"]) for k in kids) == [0.01, 0.02]
    for kid in kids:
        assert kid.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(kid.info.run_id, "eval_loss")] == [0, 2, 4]
        assert "model" in {a.path for a in client.list_artifacts(kid.info.run_id)}


def test_the_server_goes_down_mid_run_and_every_metric_still_reaches_it(
    ray_session, tiny_job, mlflow_server, monkeypatch
):
    """Stopped after step 3's metrics, restarted after step 6's: steps 4-6 wait in the buffer and are delivered."""
    from mlflow.tracking import MlflowClient

    from kubetrain.runtime.contract import Event, Stepped

    monkeypatch.setenv("KUBETRAIN_MLFLOW_FLUSH_TIMEOUT", "120")
    seen: list[int] = []

    def outage(ev: Event) -> None:
        if not isinstance(ev, Stepped):
            return
        seen.append(ev.step)
        if ev.step == 3:
            mlflow_server.stop()
        elif ev.step == 6:
            assert mlflow_server.proc.poll() is not None  # it was down for steps 4-6
            mlflow_server.start()

    job = tiny_job("pg-outage", spec__tracking__tracking_uri=mlflow_server.url, spec__training__max_steps=10,
                   spec__training__eval_every=5)  # fmt: skip
    result = run_job(job, on_event=outage)
    assert result.succeeded, result.error
    assert 3 in seen and 6 in seen and mlflow_server.healthy()
    assert result.tracking_uri == mlflow_server.url  # the run kept its server, no local fallback

    logged = [
        json.loads(line) for line in pathlib.Path(result.run_dir, "metrics.jsonl").read_text().splitlines()
    ]
    client = MlflowClient(mlflow_server.url)
    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    for key in ("train_loss", "learning_rate", "eval_loss"):
        local = sorted((r["step"], r[key]) for r in logged if key in r)
        served = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
        assert [step for step, _ in served] == [step for step, _ in local], key
        assert [value for _, value in served] == pytest.approx([value for _, value in local]), key
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == list(range(1, 11))
    assert "model" in {a.path for a in client.list_artifacts(run.info.run_id)}
