"""MLflow 3 lineage of a run's published models: LoggedModels linked to the run and its metrics; the registry.

The published directories (<storage>/<name>/final and best) are the models, and the run already uploads
them once as its `model/` and `best_model/` artifacts. So each LoggedModel is an external model: MLflow
keeps only an MLmodel stub in the model's own artifact location (no second copy of the weights) and the
model's tags name where the weights are (the published directory or URI, and the run artifact). A
registered version's source is that run artifact, so `models:/<name>@<alias>` downloads the real weights.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field

from ...spec import TrainingJob
from .. import storage
from .dataset_inputs import DatasetRecord, public_uri
from .paths import RunPaths

MODEL_TYPE = "kubetrain"
Evaluations = dict[int, dict[str, tuple[int, float]]]  # step -> metric -> (timestamp ms, value) as logged


@dataclass
class ModelRecord:
    """One published model as a LoggedModel: where it is, the step it is from, the metrics it scored."""

    kind: str  # "final" or "best"
    name: str  # <job>-<kind>: LoggedModel names are shown across the experiment's runs
    artifact_path: str  # the run artifact that holds its files
    step: int
    metrics: dict[str, tuple[int, float]]
    params: dict[str, str]
    tags: dict[str, str]
    model_id: str | None = None  # set once created (a retried write goes on from there)
    linked: bool = False


@dataclass
class Registration:
    """Register the final model under `name` and point `alias` (if any) at the new version."""

    name: str
    alias: str | None
    version: str | None = None  # set once created
    done: bool = False


def model_params(job: TrainingJob) -> dict[str, str]:
    """What the model is: the task, model and PEFT sections of the spec, flattened (no secrets live there)."""
    from .tracking import flatten

    spec = job.spec.model_dump(mode="json", include={"task", "model", "peft"}, exclude_none=True)
    return {k[:250]: v for k, v in flatten(spec, "spec").items()}


def model_records(
    job: TrainingJob, paths: RunPaths, evaluations: Evaluations, final_step: int
) -> list[ModelRecord]:
    """The final and best models that were published (the final one first), with their metrics."""
    params = model_params(job)
    records = []
    for name, local, artifact in (
        ("final", paths.final_dir, "model"),
        ("best", paths.best_dir, "best_model"),
    ):
        if not os.path.isdir(local):
            continue
        info = _info(local)
        step = int(info.get("step", final_step)) if name == "best" else final_step
        published = storage.join(paths.publish_root, name) if paths.remote else local
        tags = {
            "kubetrain.job": job.name,
            "kubetrain.model": name,
            "kubetrain.published": public_uri(published),
        }
        if name == "best" and "metric" in info:
            tags.update(
                {"kubetrain.best_metric": str(info["metric"]), "kubetrain.best_value": str(info.get("value"))}
            )
        records.append(
            ModelRecord(
                name, f"{job.name}-{name}", artifact, step, dict(evaluations.get(step, {})), params, tags
            )
        )
    return records


def _info(model_dir: str) -> dict:
    try:
        with open(os.path.join(model_dir, "kubetrain_model.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


@dataclass
class ModelWriter:
    """Writes the records (and the registration) through one MlflowClient; calling it again after a failure
    goes on where it stopped, so the tracker can queue and retry it as one call."""

    client: object
    run_id: str
    experiment_id: str
    records: list[ModelRecord]
    registration: Registration | None = None
    validation: DatasetRecord | None = None  # the data the metrics were measured on
    run_artifact_uri: str | None = field(default=None, repr=False)
    __name__ = "record_models"  # how the tracker names a call it could not make

    def __call__(self) -> None:
        for r in self.records:
            if r.model_id is None:
                r.model_id = self._create(r)
            if not r.linked:
                self._link(r)
                r.linked = True
        final = next((r for r in self.records if r.kind == "final"), None)
        if self.registration and final and not self.registration.done:
            self._register(final, self.registration)

    def _artifact_uri(self) -> str:
        if self.run_artifact_uri is None:
            self.run_artifact_uri = self.client.get_run(self.run_id).info.artifact_uri
        return self.run_artifact_uri

    def _create(self, r: ModelRecord) -> str:
        """An external LoggedModel of the run, READY, with an MLmodel stub (what the registry expects)."""
        from mlflow.models.utils import get_external_mlflow_model_spec
        from mlflow.utils.mlflow_tags import MLFLOW_MODEL_IS_EXTERNAL

        tags = {
            **r.tags,
            MLFLOW_MODEL_IS_EXTERNAL: "true",
            "kubetrain.artifact": f"runs:/{self.run_id}/{r.artifact_path}",
        }
        model = self.client.create_logged_model(
            self.experiment_id, name=r.name, source_run_id=self.run_id, tags=tags, params=r.params,
            model_type=MODEL_TYPE,
        )  # fmt: skip
        with tempfile.TemporaryDirectory() as tmp:
            get_external_mlflow_model_spec(model).save(os.path.join(tmp, "MLmodel"))
            self.client.log_model_artifacts(model.model_id, tmp)
        self.client.finalize_logged_model(model.model_id, "READY")
        return model.model_id

    def _link(self, r: ModelRecord) -> None:
        """The model as an output of the run at its step, and the metrics it scored there as its own.

        The metrics are sent again with the timestamp and value the run already has, so MLflow adds them to
        the model and keeps one copy in the run's history (its metric key includes the timestamp).
        """
        from mlflow.entities import LoggedModelOutput, Metric

        data = (self.validation.name, self.validation.digest) if self.validation else (None, None)
        metrics = [
            Metric(k, v, ts, r.step, model_id=r.model_id, dataset_name=data[0], dataset_digest=data[1])
            for k, (ts, v) in sorted(r.metrics.items())
        ]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)
        self.client.log_outputs(self.run_id, [LoggedModelOutput(r.model_id, r.step)])

    def _register(self, final: ModelRecord, reg: Registration) -> None:
        """A new version of the registered model from the final LoggedModel; the alias moves to it.

        The version's source is the run's artifact, where the weights are (the LoggedModel holds only a stub),
        so it is not created with model_id (a server then requires the model's own location as source, and
        the open-source registry keeps no model_id anyway): both ends are tagged instead, the version with
        kubetrain.model_id, the LoggedModel with mlflow.modelVersions (as mlflow.register_model does).
        """
        from mlflow.exceptions import MlflowException
        from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

        if reg.version is None:
            try:
                self.client.create_registered_model(reg.name)
            except MlflowException as e:
                if e.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
            tags = {"kubetrain.job": final.tags["kubetrain.job"], "kubetrain.model_id": final.model_id}
            version = self.client.create_model_version(
                reg.name, f"{self._artifact_uri()}/{final.artifact_path}", run_id=self.run_id,
                tags=tags,
            )  # fmt: skip
            reg.version = str(version.version)
            link = [{"name": reg.name, "version": reg.version}]
            self.client.set_logged_model_tags(final.model_id, {MLFLOW_MODEL_VERSIONS: json.dumps(link)})
        if reg.alias:
            self.client.set_registered_model_alias(reg.name, reg.alias, reg.version)
        reg.done = True
