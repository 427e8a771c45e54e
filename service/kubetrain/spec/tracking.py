"""Where checkpoints and experiment records go: checkpoint storage and the MLflow run."""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from .base import Spec


class CheckpointSpec(Spec):
    """Checkpoint storage; rerunning a job with the same name resumes from its latest checkpoint."""

    storage: str = Field(
        ".kubetrain/runs",
        description="Root for checkpoints and run state: a local path, pvc://claim/path, or s3://bucket/prefix. "
        "A job's files go under <storage>/<metadata.name>.",
    )
    every: int | None = Field(
        None, ge=1, description="Checkpoint every N optimizer steps; null checkpoints at each evaluation."
    )
    keep_last: int = Field(2, ge=1, le=1000, description="How many of the most recent checkpoints to keep.")
    keep_best: bool = Field(
        True,
        description="Also keep the best model so far (by the early-stopping metric, else eval_loss) in "
        "<storage>/<name>/best, with its step and metric value.",
    )
    resume: bool = Field(True, description="Resume from the latest checkpoint of a previous run of this job.")


class TrackingSpec(Spec):
    """The MLflow run that records params, metrics, system usage and artifacts."""

    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI; default is a local SQLite store at .kubetrain/mlflow.db."
    )
    experiment: str | None = Field(None, description="MLflow experiment; defaults to the job name.")
    run_name: str | None = Field(None, description="MLflow run name; defaults to the job name.")
    tags: dict[str, str] = Field(default_factory=dict, description="Extra tags for the MLflow run.")
    system_metrics: bool = Field(True, description="Sample CPU, memory and GPU usage into the run.")
    register_model: str | None = Field(None, description="Register the final model under this registry name.")
    register_alias: str | None = Field(
        "candidate",
        pattern=r"^[A-Za-z0-9_-]{1,255}$",
        description="Alias moved to each new version registered by register_model (letters, digits, _ and -; "
        "not 'latest' nor v<number>, which MLflow reserves); null registers without an alias.",
    )

    @field_validator("register_alias")
    @classmethod
    def _alias_not_reserved(cls, alias: str | None) -> str | None:
        if alias is not None and (alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias)):
            raise ValueError(f"'{alias}' is reserved by MLflow ('latest' and v<number> name versions)")
        return alias
