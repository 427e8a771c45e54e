"""What a cluster install decides for every job: images, MLflow, storage and the Secrets jobs may reference."""

from __future__ import annotations

import os
import pathlib

import yaml
from pydantic import BaseModel, ConfigDict, Field

from .. import __version__


class SecretRef(BaseModel):
    """A Secret whose keys become environment variables of the Ray pods (by reference, never by value)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., min_length=1, description="Secret name in the job's namespace.")
    keys: dict[str, str] = Field(..., description="Environment variable -> key inside the Secret.")


class PlatformConfig(BaseModel):
    """Platform defaults a TrainingJob does not carry; set by the operator's config file (Helm values)."""

    model_config = ConfigDict(extra="forbid")

    image: str = Field(f"ghcr.io/kubetrain/kubetrain:{__version__}", description="Ray head and worker image.")
    image_pull_policy: str = Field("IfNotPresent", description="imagePullPolicy of the Ray pods.")
    ray_version: str = Field("2.60.0", description="rayClusterSpec.rayVersion.")
    service_account: str | None = Field(
        "kubetrain-runtime", description="Service account of the Ray pods (may patch trainingjobs/status)."
    )
    head_cpu: str = Field("1", description="CPU request and limit of the Ray head.")
    head_memory: str = Field("4Gi", description="Memory request and limit of the Ray head.")
    worker_memory: str = Field("8Gi", description="Worker memory when the job sets no memory_per_worker.")
    mlflow_tracking_uri: str | None = Field(None, description="MLflow URI for jobs that set none.")
    mlflow_ui_url: str | None = Field(None, description="Browser URL of MLflow, for links in the status.")
    storage: str | None = Field(
        None, description="Checkpoint root (s3://… or pvc://…) for jobs that keep the local default."
    )
    gpu_type_label: str = Field(
        "kubetrain.dev/gpu-type", description="Node label matched by resources.gpu_type."
    )
    secrets: list[SecretRef] = Field(
        default_factory=list,
        description="Platform Secrets (S3 keys, MLflow credentials, hub token) injected into every job by reference.",
    )

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> PlatformConfig:
        """From a YAML file (KUBETRAIN_CONFIG when path is None); defaults when neither is set."""
        path = path or os.environ.get("KUBETRAIN_CONFIG") or None
        if not path:
            return cls()
        data = yaml.safe_load(pathlib.Path(path).read_text()) or {}
        return cls.model_validate(data)
