"""What to do about one TrainingJob, given what is observed (pure): create, suspend/resume, status, clean-up."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

from ..render import PlatformConfig, rayjob_name, render
from ..schema.status import TERMINAL, Phase
from ..spec import SpecError, validate_job
from .status import differs, invalid_status, status_from_rayjob


@dataclass(frozen=True)
class Create:
    """Create these objects (ConfigMap, RayJob); an existing one (409) counts as created."""

    objects: list[dict[str, Any]]


@dataclass(frozen=True)
class SetSuspend:
    """Patch the RayJob's spec.suspend."""

    name: str
    suspend: bool


@dataclass(frozen=True)
class PatchStatus:
    """Merge-patch these operator-owned status keys (None deletes; status.progress is never touched)."""

    status: dict[str, Any]


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event on the TrainingJob."""

    type: str
    reason: str
    message: str


@dataclass(frozen=True)
class DeleteCluster:
    """Delete a finished RayJob's RayCluster (its outcome's TTL has passed); a missing one counts as deleted."""

    name: str


@dataclass(frozen=True)
class Requeue:
    """Reconcile this TrainingJob again after `seconds` (a clean-up TTL is still running)."""

    seconds: float


Action = Create | SetSuspend | PatchStatus | Event | DeleteCluster | Requeue


def decide(trainingjob: dict[str, Any], observed_rayjob: dict[str, Any] | None, now: str,
           platform: PlatformConfig | None = None) -> list[Action]:  # fmt: skip
    """The actions that bring the world in line with one TrainingJob."""
    meta = trainingjob.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return []  # the RayJob and ConfigMap go with it (ownerReferences)
    old = trainingjob.get("status") or {}
    try:
        job = validate_job(_input(trainingjob))
    except SpecError as e:
        message = "; ".join(p.render() for p in e.problems)
        if old.get("reason") == "InvalidSpec" and old.get("observedGeneration") == meta.get("generation"):
            return []
        return [
            PatchStatus(invalid_status(trainingjob, message, now)),
            Event("Warning", "InvalidSpec", message),
        ]
    conflict = _owned_by_another(meta, observed_rayjob)
    if conflict:
        if old.get("reason") == "RayJobNameTaken":
            return []
        return [PatchStatus(invalid_status(trainingjob, conflict, now, reason="RayJobNameTaken")),
                Event("Warning", "RayJobNameTaken", conflict)]  # fmt: skip
    actions: list[Action] = []
    suspend = bool(job.spec.lifecycle.suspend)
    finished = old.get("phase") in {p.value for p in TERMINAL}
    if observed_rayjob is None and not finished:
        # A job created suspended still gets its RayJob (suspended: no Ray cluster), so resuming is one patch.
        objects = render(job, platform or PlatformConfig())
        actions.append(Create(objects))
        actions.append(Event("Normal", "Created", f"RayJob {rayjob_name(job.metadata.name)} created"))
        observed_rayjob = objects[-1]  # what exists once the create went through (its status still empty)
    elif observed_rayjob is not None and not finished:
        current = bool((observed_rayjob.get("spec") or {}).get("suspend"))
        ray_done = ((observed_rayjob.get("status") or {}).get("jobDeploymentStatus")) in (
            "Complete",
            "Failed",
        )
        if current != suspend and not ray_done and not (job.spec.resources.queue and not suspend):
            actions.append(SetSuspend(observed_rayjob["metadata"]["name"], suspend))
            actions.append(Event("Normal", "Suspended" if suspend else "Resumed",
                                 f"RayJob {observed_rayjob['metadata']['name']} {'suspended' if suspend else 'resumed'}"))  # fmt: skip
    status = status_from_rayjob(
        trainingjob, observed_rayjob, now, suspend=suspend, workers=job.spec.resources.workers
    )
    if differs(old, status):
        actions.append(PatchStatus(status))
        if status.get("phase") != old.get("phase") and status.get("phase") in (
            Phase.FAILED.value,
            Phase.SUCCEEDED.value,
        ):
            kind = "Warning" if status["phase"] == Phase.FAILED.value else "Normal"
            actions.append(Event(kind, status.get("reason") or status["phase"], status.get("message") or ""))
    return actions + cleanup(job.spec.lifecycle, {**old, **status}, observed_rayjob, now)


def cleanup(lifecycle: Any, status: dict[str, Any], rayjob: dict[str, Any] | None, now: str) -> list[Action]:
    """Delete a finished job's Ray cluster once its outcome's TTL has passed, or come back when it will have.

    The RayJob itself keeps shutdownAfterJobFinishes with the longer TTL (render/rayjob.py): KubeRay accepts
    nothing else in every mode (suspend, Kueue), so the shorter outcome's TTL is the operator's to keep.
    """
    phase = status.get("phase")
    cluster = ((rayjob or {}).get("status") or {}).get("rayClusterName")
    if (
        phase not in (Phase.SUCCEEDED.value, Phase.FAILED.value)
        or not cluster
        or status.get("clusterDeletionTime")
    ):
        return []
    ttl = (
        lifecycle.ttl_seconds_after_success
        if phase == Phase.SUCCEEDED.value
        else lifecycle.ttl_seconds_after_failure
    )
    left = ttl - _seconds_between(status.get("completionTime") or now, now)
    if left > 0:
        return [Requeue(left)]
    return [
        DeleteCluster(cluster),
        PatchStatus({"clusterDeletionTime": now}),
        Event(
            "Normal", "ClusterDeleted", f"RayCluster {cluster} deleted {ttl}s after the job {phase.lower()}"
        ),
    ]


def _owned_by_another(meta: dict[str, Any], rayjob: dict[str, Any] | None) -> str | None:
    """A message when the RayJob of this name is controlled by another object (a name collision), else None."""
    uid = meta.get("uid")
    owners = [
        o for o in ((rayjob or {}).get("metadata") or {}).get("ownerReferences") or [] if o.get("controller")
    ]
    if not uid or not owners or any(o.get("uid") == uid for o in owners):
        return None
    other = owners[0]
    return (
        f"RayJob {rayjob['metadata']['name']} already exists and belongs to {other.get('kind')} {other.get('name')}: "
        "rename this TrainingJob (metadata.name)"
    )


def _seconds_between(start: str, end: str) -> float:
    parse = lambda t: datetime.datetime.strptime(t, "%Y-%m-%dT%H:%M:%SZ")  # noqa: E731 - RFC 3339, UTC, as written
    return (parse(end) - parse(start)).total_seconds()


def _input(body: dict[str, Any]) -> dict[str, Any]:
    """The part of a stored object the pydantic model validates (status and server metadata are the server's)."""
    meta = body.get("metadata") or {}
    keep = ("name", "namespace", "labels", "annotations", "uid", "generation", "creationTimestamp")
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {k: meta[k] for k in keep if k in meta},
        "spec": body.get("spec"),
    }
