"""MLflow 3 lineage of a real (in-process, one-worker) tiny run on the chart's setup: a tracking server on PostgreSQL.

The same calls on a local SQLite store, the alias moving between versions and sweep trials are covered
without training in tests/unit/test_lineage.py.
"""

from __future__ import annotations

import json
import pathlib

import pytest

from tests.integration.servers import MlflowServer, running_postgres

pytestmark = pytest.mark.ray


def test_a_run_logs_its_datasets_models_and_registers_the_final_one(
    ray_session, tiny_job, tmp_path, monkeypatch
):
    from mlflow.tracking import MlflowClient

    from kubetrain.runtime.run.job import run_job

    with running_postgres() as pg:
        (tmp_path / "mlflow-server").mkdir()
        server = MlflowServer(pg.uri(), tmp_path / "mlflow-server").start()
        try:
            # a busy machine answers the first calls slowly: not the unreachable-server case tested elsewhere
            monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")
            job = tiny_job("lineage", spec__resources__workers=1, spec__tracking__tracking_uri=server.url,
                           spec__tracking__register_model="tiny-lineage", spec__tracking__register_alias="staging")  # fmt: skip
            result = run_job(job, local_root=str(tmp_path / "root"), show=False, in_process=True)
            assert result.succeeded, result.error
            assert result.tracking_uri == server.url
            _check(MlflowClient(server.url), result)
        finally:
            server.stop()


def _check(client, result) -> None:
    run = client.get_run(result.mlflow_run_id)
    inputs = {(d.dataset.name, d.tags[0].value): d.dataset for d in run.inputs.dataset_inputs}
    assert set(inputs) == {("dates/train.jsonl", "training"), ("dates/validation.jsonl", "validation")}
    train = inputs["dates/train.jsonl", "training"]
    assert train.source_type == "local" and json.loads(train.source)["uri"].endswith(
        "jobs/data/dates/train.jsonl"
    )
    assert json.loads(train.profile)["rows"] > 0 and "prompt" in train.schema
    validation = inputs["dates/validation.jsonl", "validation"]
    # one eval_loss per evaluation in the run, although the models' metrics repeat two of them
    assert [m.step for m in client.get_metric_history(run.info.run_id, "eval_loss")] == [0, 4, 8]

    models = {m.tags["kubetrain.model"]: m for m in client.search_logged_models([run.info.experiment_id])}
    assert set(models) == {"final", "best"}
    best_info = json.loads((pathlib.Path(result.best_dir) / "kubetrain_model.json").read_text())
    for name, step in (("final", 8), ("best", best_info["step"])):
        model = models[name]
        assert model.source_run_id == run.info.run_id and model.tags["mlflow.model.isExternal"] == "true"
        metrics = {m.key: m for m in model.metrics}
        assert metrics["eval_loss"].step == step and metrics["eval_loss"].dataset_digest == validation.digest
        assert model.params["spec.peft.type"] == "lora"
    assert {m.key: m.value for m in models["best"].metrics}["eval_loss"] == pytest.approx(best_info["value"])
    assert (
        models["final"].tags["kubetrain.published"] == result.final_dir
        and models["final"].name == "lineage-final"
    )

    version = client.get_model_version_by_alias("tiny-lineage", "staging")
    assert version.run_id == run.info.run_id and version.source.endswith("/model")
    assert version.tags["kubetrain.model_id"] == models["final"].model_id
    adapter = client.download_artifacts(run.info.run_id, "model/adapter_config.json")
    assert json.loads(pathlib.Path(adapter).read_text())["r"] == 4
