"""Cluster lifecycle of a job: suspension, retries, deadlines and clean-up (RayJob fields)."""

from __future__ import annotations

from pydantic import Field

from .base import Spec


class LifecycleSpec(Spec):
    """How long a job may run, how often it is retried, and when its Ray cluster is removed."""

    suspend: bool = Field(
        False, description="Suspend the job (no Ray cluster); set false to start or resume it."
    )
    backoff_limit: int = Field(0, ge=0, le=100, description="Retries of the whole job after failure.")
    max_worker_failures: int = Field(
        3, ge=0, le=1000, description="Worker-group restarts from the last checkpoint before the run fails."
    )
    active_deadline_seconds: int | None = Field(
        None, ge=1, description="Fail the job after this many seconds."
    )
    ttl_seconds_after_success: int = Field(
        600, ge=0, description="Remove the Ray cluster this long after success."
    )
    ttl_seconds_after_failure: int = Field(
        3600, ge=0, description="Keep a failed job's Ray cluster this long for debugging."
    )
