"""What each worker gets and where it may run (the RayJob's worker group in a cluster)."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from .base import Spec

_QUANTITY = re.compile(r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$")


def _check_quantity(value: str) -> str:
    if not _QUANTITY.match(value):
        raise ValueError("must be a Kubernetes quantity such as 500m, 2, 4Gi or 512Mi")
    return value


Quantity = Annotated[str, AfterValidator(_check_quantity)]


class Toleration(Spec):
    """A Kubernetes toleration for the worker pods."""

    key: str | None = Field(None, description="Taint key the toleration applies to.")
    operator: Literal["Exists", "Equal"] = Field("Equal", description="Exists or Equal.")
    value: str | None = Field(None, description="Taint value (operator Equal).")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="Taint effect."
    )
    toleration_seconds: int | None = Field(None, ge=0, description="How long a NoExecute taint is tolerated.")


class ResourcesSpec(Spec):
    """Workers and their resources. Locally the workers are processes on one Ray node."""

    workers: int = Field(2, ge=1, le=4096, description="Ray Train workers (data-parallel ranks).")
    cpus_per_worker: float = Field(1.0, gt=0.0, description="CPUs reserved per worker (fractions allowed).")
    gpus_per_worker: float = Field(0.0, ge=0.0, le=16.0, description="GPUs per worker; 0 trains on CPU.")
    memory_per_worker: Quantity | None = Field(
        None, description="Memory request and limit per worker pod, e.g. 8Gi."
    )
    gpu_type: str | None = Field(
        None, description="Accelerator type label, e.g. A100 or H100 (node selection)."
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Node labels the worker pods need."
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, description="Tolerations for the worker pods."
    )
    image: str | None = Field(None, description="Container image; default from the platform configuration.")
    service_account: str | None = Field(None, description="Kubernetes service account of the Ray pods.")
    queue: str | None = Field(None, description="Kueue LocalQueue name (sets kueue.x-k8s.io/queue-name).")
    priority_class: str | None = Field(None, description="Kubernetes / Kueue priority class name.")
