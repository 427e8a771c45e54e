"""The TrainingJob status: phases, conditions and progress as pydantic models (the CRD status schema)."""

from __future__ import annotations

import enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Phase(str, enum.Enum):
    """Where a TrainingJob is in its life; `TRANSITIONS` lists the allowed moves."""

    PENDING = "Pending"
    QUEUED = "Queued"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"


TERMINAL = frozenset({Phase.SUCCEEDED, Phase.FAILED})

TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    Phase.PENDING: frozenset({Phase.QUEUED, Phase.RUNNING, Phase.SUSPENDED, Phase.SUCCEEDED, Phase.FAILED}),
    Phase.QUEUED: frozenset({Phase.RUNNING, Phase.SUSPENDED, Phase.SUCCEEDED, Phase.FAILED}),
    Phase.RUNNING: frozenset({Phase.QUEUED, Phase.SUSPENDED, Phase.SUCCEEDED, Phase.FAILED}),
    Phase.SUSPENDED: frozenset({Phase.PENDING, Phase.QUEUED, Phase.RUNNING, Phase.FAILED}),
    Phase.SUCCEEDED: frozenset(),
    Phase.FAILED: frozenset(),
}


def can_move(old: Phase | str | None, new: Phase | str) -> bool:
    """Whether the phase may go from old to new (staying put is always allowed)."""
    if old is None or old == "":
        return True
    old, new = Phase(old), Phase(new)
    return old == new or new in TRANSITIONS[old]


class ConditionType(str, enum.Enum):
    """The standard conditions every TrainingJob carries."""

    READY = "Ready"  # the RayJob exists and is accepted
    RUNNING = "Running"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class _Status(BaseModel):
    model_config = ConfigDict(extra="forbid", use_enum_values=True)


class Condition(_Status):
    """A standard Kubernetes condition (metav1.Condition)."""

    type: str = Field(..., description="Condition type: Ready, Running, Suspended, Succeeded or Failed.")
    status: str = Field(..., description="True, False or Unknown.")
    reason: str = Field(..., description="CamelCase reason for the last transition.")
    message: str = Field("", description="Human-readable details.")
    lastTransitionTime: str = Field(..., description="When the status last changed (RFC 3339).")
    observedGeneration: int | None = Field(None, description="metadata.generation the condition was set for.")


class Progress(_Status):
    """Training progress, written by the runtime through the status subresource (never by the operator)."""

    step: int | None = Field(None, description="Optimizer steps done (a sweep: trials finished).")
    total_steps: int | None = Field(None, description="Optimizer steps planned (a sweep: trials in all).")
    percent: float | None = Field(None, description="step / total_steps x 100.")
    eta_seconds: float | None = Field(None, description="Estimated seconds to completion.")
    metrics: dict[str, float] = Field(
        default_factory=dict, description="Latest training and validation metrics."
    )
    resumed_from_step: int | None = Field(
        None, description="The checkpoint step this attempt resumed from (absent when it started fresh)."
    )
    mlflow_run_id: str | None = Field(None, description="MLflow run id.")
    mlflow_url: str | None = Field(None, description="Link to the MLflow run.")
    updated: str | None = Field(None, description="When the runtime last reported (RFC 3339).")


class Health(_Status):
    """Training health, written by the runtime: why it stopped on a NaN or infinite value, and warnings."""

    reason: str | None = Field(
        None, description="Why training stopped: NaNLoss, InfiniteLoss, NaNGradient or InfiniteGradient."
    )
    message: str | None = Field(
        None,
        description="The diagnosis: the step, the learning rate then, the last good checkpoint, what to try.",
    )
    warnings: dict[str, str] = Field(
        default_factory=dict,
        description="Warnings with their evidence: diverging (a loss spike), overfitting.",
    )


class TrainingJobStatus(_Status):
    """Observed state of a TrainingJob, mirrored from its RayJob by the operator."""

    phase: Phase | None = Field(None, description="Pending, Queued, Running, Succeeded, Failed or Suspended.")
    reason: str | None = Field(None, description="CamelCase reason of the current phase (e.g. InvalidSpec).")
    message: str | None = Field(None, description="Details of the current phase (failure message).")
    conditions: list[Condition] = Field(default_factory=list, description="Standard conditions.")
    observedGeneration: int | None = Field(None, description="metadata.generation last acted on.")
    rayJobName: str | None = Field(None, description="The RayJob running this job.")
    rayClusterName: str | None = Field(None, description="The Ray cluster of the RayJob.")
    dashboardURL: str | None = Field(None, description="Ray dashboard of the job's cluster.")
    jobDeploymentStatus: str | None = Field(None, description="KubeRay's jobDeploymentStatus, as observed.")
    jobStatus: str | None = Field(None, description="Ray's job status, as observed.")
    startTime: str | None = Field(None, description="When the job started running (RFC 3339).")
    completionTime: str | None = Field(None, description="When the job finished (RFC 3339).")
    workers: int | None = Field(None, description="Worker replicas requested.")
    attempt: int | None = Field(
        None,
        description="Which attempt of the RayJob this is (1 + earlier failed attempts; lifecycle.backoff_limit).",
    )
    clusterDeletionTime: str | None = Field(
        None,
        description="When the operator deleted the finished job's Ray cluster (lifecycle.ttl_seconds_after_success "
        "or ttl_seconds_after_failure after completionTime).",
    )
    mlflowRunId: str | None = Field(None, description="MLflow run id (from progress).")
    metric: str | None = Field(
        None, description="Latest headline metric, e.g. eval_loss=0.31 (from the runtime)."
    )
    progress: Progress | None = Field(None, description="Training progress reported by the runtime.")
    health: Health | None = Field(
        None,
        description="Training health reported by the runtime (a Failed job's reason and message come from it).",
    )

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)
