"""MLflow 3 lineage without training: dataset inputs, LoggedModels and the registry on a real SQLite store."""

from __future__ import annotations

import copy
import hashlib
import json
import pathlib

import pytest

from kubetrain.runtime.run import dataset_inputs, lineage
from kubetrain.runtime.run.paths import RunPaths
from kubetrain.spec import validate_job
from kubetrain.spec.data import DataSpec
from kubetrain.spec.tracking import TrackingSpec
from tests.conftest import MINIMAL


@pytest.fixture
def files(tmp_path):
    (tmp_path / "train.jsonl").write_text(
        '{"prompt": "a", "response": "b", "n": 1}\n{"prompt": "c", "response": "d", "n": 2}\n'
    )
    (tmp_path / "val.csv").write_text("text,label\nhi,1\nho,0\n")
    d = tmp_path / "shards"
    d.mkdir()
    (d / "a.jsonl").write_text('{"text": "x"}\n')
    (d / "b.jsonl").write_text('{"text": "y"}')  # no final newline: still one row
    return tmp_path


def fingerprint_as_before(spec: DataSpec) -> str:
    """The runs' `data.fingerprint` tag as it was defined before lineage (train/data.py's, now gone): sha256 over
    the bytes of the local data files in order (or the source URIs), so new tags compare with old runs'."""
    h = hashlib.sha256()
    for source in filter(None, [spec.train, spec.validation]):
        p = pathlib.Path(source)
        for f in sorted(p.iterdir()) if p.is_dir() else [p]:
            h.update(f.read_bytes() if f.is_file() else str(f).encode())
    return h.hexdigest()


@pytest.mark.parametrize(
    "train, validation",
    [
        ("train.jsonl", None),
        ("train.jsonl", "val.csv"),
        ("shards", None),
        ("s3://b/k/t.jsonl", "hf://datasets/o/n"),
    ],
)
def test_one_pass_gives_the_runs_data_fingerprint(files, train, validation):
    def at(p):
        return p if p is None or "://" in p else str(files / p)

    spec = DataSpec(train=at(train), validation=at(validation))
    assert dataset_inputs.describe(spec, 7).fingerprint == fingerprint_as_before(spec)


def test_dataset_records_name_source_context_profile_and_schema(files):
    spec = DataSpec(train=str(files / "train.jsonl"), validation=str(files / "shards"))
    train, val = dataset_inputs.describe(spec, 7).datasets
    assert (train.context, val.context) == ("training", "validation")
    assert train.source == str(files / "train.jsonl") and train.name.endswith("/train.jsonl")
    assert train.profile["rows"] == 2 and train.profile["files"] == 1 and len(train.profile["sha256"]) == 64
    assert train.columns == [("prompt", "string"), ("response", "string"), ("n", "long")]
    assert val.profile["rows"] == 2 and val.profile["files"] == 2
    assert len(train.digest) == 32 and train.digest != val.digest


def test_a_split_validation_set_is_its_own_dataset_of_the_same_source(files):
    spec = DataSpec(train=str(files / "train.jsonl"), validation_split=0.2)
    train, held = dataset_inputs.describe(spec, 7).datasets
    assert held.context == "validation" and held.source == train.source
    assert held.profile["split_of"] == train.name and held.profile["validation_split"] == 0.2
    other_seed = dataset_inputs.describe(spec, 8).datasets[1]
    assert held.digest not in (train.digest, other_seed.digest)


def test_remote_sources_are_referenced_without_credentials():
    spec = DataSpec(train="s3://key:secret@bucket/data/t.jsonl", validation="hf://datasets/org/set")
    train, val = dataset_inputs.describe(spec).datasets
    assert train.source == "s3://bucket/data/t.jsonl" and train.columns is None
    assert val.name == "org/set"
    inputs = dataset_inputs.to_inputs([train, val])
    assert "secret" not in str([i.to_proto() for i in inputs])
    assert [i.dataset.source_type for i in inputs] == ["s3", "hugging_face"]


@pytest.mark.parametrize("alias, ok", [("candidate", True), ("prod_2-b", True), (None, True), ("latest", False),
                                       ("V7", False), ("a b", False), ("", False)])  # fmt: skip
def test_register_alias_is_checked_like_mlflow_does(alias, ok):
    if ok:
        assert TrackingSpec(register_alias=alias).register_alias == alias
    else:
        with pytest.raises(ValueError, match="register_alias"):
            TrackingSpec(register_alias=alias)


def _publish(run_dir: pathlib.Path, best_step: int) -> None:
    for leaf, info in (
        ("final", {"step": 4}),
        ("best", {"step": best_step, "metric": "eval_loss", "value": 0.5}),
    ):
        (run_dir / leaf).mkdir(parents=True, exist_ok=True)
        (run_dir / leaf / "adapter_config.json").write_text('{"r": 4}')
        (run_dir / leaf / "kubetrain_model.json").write_text(json.dumps(info))


def _tracked_run(tmp_path, job, *, parent=None):
    """What run_job does around the training, with made-up evaluations: returns (tracker, writer)."""
    from kubetrain.runtime.run.job import _registration
    from kubetrain.runtime.run.tracking import Tracker

    run_dir = tmp_path / "runs" / job.name
    tracker = Tracker(job, str(run_dir), str(tmp_path), parent_run_id=parent)
    tracker.start({})
    tracker.log_datasets(dataset_inputs.describe(job.spec.data, 7).datasets)
    for step, loss in ((0, 2.0), (2, 0.5), (4, 0.7)):
        tracker.log_evaluation({"eval_loss": loss, "eval_accuracy": 1 / (1 + loss)}, step)
    _publish(run_dir, best_step=2)
    tracker.log_artifacts(str(run_dir / "final"), "model")
    paths = RunPaths(str(tmp_path), str(run_dir), str(run_dir / "final"), str(run_dir / "best"), "", None)
    writer = tracker.record_models(
        lineage.model_records(job, paths, tracker.evaluations, 4), _registration(job, tracker)
    )
    tracker.end("FINISHED")
    return tracker, writer


def test_datasets_models_metrics_and_alias_read_back_through_mlflow_client(tmp_path, files):
    from mlflow.entities import LoggedModelStatus
    from mlflow.tracking import MlflowClient

    data = copy.deepcopy(MINIMAL)
    data["spec"]["data"] = {"train": str(files / "train.jsonl"), "validation": str(files / "shards")}
    data["spec"]["tracking"] = {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "register_model": "tiny"}
    first, _ = _tracked_run(tmp_path, validate_job(data))
    data["metadata"]["name"] += "-2"
    second, writer = _tracked_run(tmp_path, validate_job(data))
    client = MlflowClient(first.uri)

    run = client.get_run(second.run_id)
    inputs = {
        d.dataset.name: (d.dataset.digest, {t.key: t.value for t in d.tags})
        for d in run.inputs.dataset_inputs
    }
    assert {v[1]["mlflow.data.context"] for v in inputs.values()} == {"training", "validation"}
    described = dataset_inputs.describe(validate_job(data).spec.data).datasets
    assert {n: v[0] for n, v in inputs.items()} == {d.name: d.digest for d in described}
    # each eval_loss is once in the run's history although the models' metrics repeat it
    assert [m.step for m in client.get_metric_history(second.run_id, "eval_loss")] == [0, 2, 4]

    models = client.search_logged_models(
        [run.info.experiment_id], filter_string=f"source_run_id = '{second.run_id}'"
    )
    by_name = {m.tags["kubetrain.model"]: m for m in models}
    assert {m.name for m in models} == {"t-2-final", "t-2-best"}
    assert set(by_name) == {"final", "best"}
    final, best = by_name["final"], by_name["best"]
    assert {(m.key, m.value, m.step) for m in final.metrics} == {
        ("eval_loss", 0.7, 4),
        ("eval_accuracy", 1 / 1.7, 4),
    }
    assert {(m.key, m.value, m.step) for m in best.metrics} == {
        ("eval_loss", 0.5, 2),
        ("eval_accuracy", 1 / 1.5, 2),
    }
    assert {m.dataset_digest for m in final.metrics} == {writer.validation.digest}
    assert (
        best.tags["kubetrain.best_metric"] == "eval_loss" and best.tags["mlflow.model.isExternal"] == "true"
    )
    assert final.tags["kubetrain.published"].endswith("/final") and final.params["spec.peft.type"]
    assert final.status == LoggedModelStatus.READY and best.status == LoggedModelStatus.READY
    outputs = {o.model_id: o.step for o in run.outputs.model_outputs}
    assert outputs == {final.model_id: 4, best.model_id: 2}
    # two runs registered: the alias moved to the second, whose source is the run's model/ artifact
    version = client.get_model_version_by_alias("tiny", "candidate")
    assert str(version.version) == "2" and version.run_id == second.run_id
    assert version.tags["kubetrain.model_id"] == final.model_id
    linked = client.get_logged_model(final.model_id).tags["mlflow.modelVersions"]
    assert json.loads(linked) == [{"name": "tiny", "version": "2"}]
    assert version.source.endswith("/model")
    assert json.loads(
        pathlib.Path(client.download_artifacts(second.run_id, "model/adapter_config.json")).read_text()
    )


def test_sweep_trials_keep_their_models_but_register_nothing(tmp_path, files):
    from mlflow.tracking import MlflowClient

    data = copy.deepcopy(MINIMAL)
    data["spec"]["data"] = {"train": str(files / "train.jsonl")}
    data["spec"]["tracking"] = {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "register_model": "swept"}
    job = validate_job(data)
    client = MlflowClient(data["spec"]["tracking"]["tracking_uri"])
    exp = client.create_experiment(job.name, artifact_location=f"file://{tmp_path}/mlartifacts/{job.name}")
    parent = client.create_run(exp).info.run_id
    trial, writer = _tracked_run(tmp_path, job, parent=parent)
    assert writer.registration is None and client.search_registered_models() == []
    assert len(client.search_logged_models([exp])) == 2
