"""What to do about one TrainingJob, given what is observed (pure): create, suspend/resume, status, events."""

from __future__ import annotations

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


Action = Create | SetSuspend | PatchStatus | Event


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
    return actions


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
