"""RayJob state -> TrainingJob status (pure): the phase with its allowed transitions, and standard conditions."""

from __future__ import annotations

from typing import Any

from ..schema.status import Condition, ConditionType, Phase, can_move

# Status keys the operator owns; everything else under status (progress, metric, mlflowRunId) is the runtime's.
OWNED = (
    "phase", "reason", "message", "conditions", "observedGeneration", "rayJobName", "rayClusterName",
    "dashboardURL", "jobDeploymentStatus", "jobStatus", "startTime", "completionTime", "workers", "attempt",
    "clusterDeletionTime",
)  # fmt: skip
# KubeRay's jobDeploymentStatus values that end a RayJob for good (a failed attempt with retries left goes
# Failed -> Retrying in the same reconcile, so Failed is only ever observed once retries are spent).
FINAL_DEPLOYMENT = ("Complete", "Failed", "ValidationFailed")

_REASONS = {
    Phase.PENDING: ("RayJobCreated", "the RayJob is created; its Ray cluster is starting"),
    Phase.QUEUED: ("Queued", "waiting for admission (Kueue) or for the Ray cluster"),
    Phase.RUNNING: ("Running", "the training is running"),
    Phase.SUCCEEDED: ("Succeeded", "the training finished"),
    Phase.FAILED: ("Failed", "the training failed"),
    Phase.SUSPENDED: ("Suspended", "spec.lifecycle.suspend is true: no Ray cluster"),
}


def phase_of(rayjob: dict[str, Any], suspend: bool) -> tuple[Phase, str, str]:
    """The phase a RayJob's state means, with a reason and a message."""
    spec, status = rayjob.get("spec") or {}, rayjob.get("status") or {}
    deployment = status.get("jobDeploymentStatus") or ""
    job_status = status.get("jobStatus") or ""
    ray_reason, ray_message = status.get("reason") or "", status.get("message") or ""
    # Only KubeRay's deployment status ends a job: jobStatus FAILED is also seen while KubeRay moves a failed
    # attempt to Retrying (its status keeps the old jobStatus until the new cluster starts).
    if deployment in FINAL_DEPLOYMENT or (
        job_status == "SUCCEEDED" and deployment in ("Complete", "", "Running")
    ):
        if job_status == "SUCCEEDED" and deployment in ("Complete", "", "Running"):
            return Phase.SUCCEEDED, *_REASONS[Phase.SUCCEEDED]
        return (
            Phase.FAILED,
            ray_reason or ("RayJobFailed" if deployment != "Complete" else f"Job{job_status.title()}"),
            ray_message or f"RayJob {deployment or 'finished'}, Ray job status {job_status or 'unknown'}",
        )
    if suspend and (deployment in ("Suspended", "Suspending", "") or spec.get("suspend")):
        return Phase.SUSPENDED, *_REASONS[Phase.SUSPENDED]
    if deployment in ("Suspended", "Suspending") or (spec.get("suspend") and not suspend):
        return Phase.QUEUED, *_REASONS[Phase.QUEUED]
    if deployment == "Running":
        return Phase.RUNNING, *_REASONS[Phase.RUNNING]
    if deployment in ("Retrying", "Waiting"):
        return Phase.QUEUED, deployment, ray_message or f"RayJob is {deployment.lower()}"
    return Phase.PENDING, *_REASONS[Phase.PENDING]


def status_from_rayjob(
    job: dict[str, Any],
    rayjob: dict[str, Any] | None,
    now: str,
    suspend: bool = False,
    workers: int | None = None,
) -> dict[str, Any]:
    """The operator-owned status of a TrainingJob given its observed RayJob (None: not created yet)."""
    old = job.get("status") or {}
    generation = (job.get("metadata") or {}).get("generation")
    if rayjob is None:
        phase, reason, message = (
            (Phase.SUSPENDED, *_REASONS[Phase.SUSPENDED])
            if suspend
            else (Phase.PENDING, "Creating", "creating the RayJob")
        )
    else:
        phase, reason, message = phase_of(rayjob, suspend)
    health = old.get("health") or {}
    # A training-health stop: the runtime knows why better than the RayJob's exit code.
    if phase == Phase.FAILED and health.get("reason"):
        reason, message = health["reason"], health.get("message") or message
    if not can_move(old.get("phase"), phase):  # e.g. a finished job stays finished
        return {k: old.get(k) for k in OWNED}
    ray_status = (rayjob or {}).get("status") or {}
    new: dict[str, Any] = {
        "phase": phase.value,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "rayJobName": (rayjob or {}).get("metadata", {}).get("name") or old.get("rayJobName"),
        "rayClusterName": ray_status.get("rayClusterName") or old.get("rayClusterName"),
        "dashboardURL": _url(ray_status.get("dashboardURL")) or old.get("dashboardURL"),
        "jobDeploymentStatus": ray_status.get("jobDeploymentStatus") or None,
        "jobStatus": ray_status.get("jobStatus") or None,
        "startTime": old.get("startTime"),
        "completionTime": old.get("completionTime"),
        "workers": workers or ((job.get("spec") or {}).get("resources") or {}).get("workers"),
        "attempt": attempt_of(ray_status, finished=phase in (Phase.SUCCEEDED, Phase.FAILED))
        or old.get("attempt"),
        "clusterDeletionTime": old.get("clusterDeletionTime"),
    }
    if phase == Phase.RUNNING and not new["startTime"]:
        new["startTime"] = ray_status.get("startTime") or now
    if phase in (Phase.SUCCEEDED, Phase.FAILED) and not new["completionTime"]:
        new["completionTime"] = ray_status.get("endTime") or now
    new["conditions"] = conditions(phase, reason, message, old.get("conditions") or [], generation, now,
                                   ready=rayjob is not None)  # fmt: skip
    return new


def attempt_of(ray_status: dict[str, Any], finished: bool) -> int | None:
    """1-based attempt from KubeRay's counters (status.failed / succeeded count finished attempts)."""
    if not ray_status.get("jobDeploymentStatus"):
        return None
    done = (ray_status.get("failed") or 0) + (ray_status.get("succeeded") or 0)
    return done if finished and done else done + 1


def invalid_status(
    job: dict[str, Any], message: str, now: str, reason: str = "InvalidSpec"
) -> dict[str, Any]:
    """Status of a TrainingJob the operator cannot run (the models reject its spec; its RayJob name is taken)."""
    old = job.get("status") or {}
    generation = (job.get("metadata") or {}).get("generation")
    out = {k: None for k in OWNED}
    out.update(
        phase=Phase.FAILED.value,
        reason=reason,
        message=message,
        observedGeneration=generation,
        completionTime=old.get("completionTime") or now,
        conditions=conditions(Phase.FAILED, reason, message, old.get("conditions") or [], generation, now, ready=False),
    )  # fmt: skip
    return out


def conditions(
    phase: Phase,
    reason: str,
    message: str,
    old: list[dict[str, Any]],
    generation: int | None,
    now: str,
    ready: bool,
) -> list[dict[str, Any]]:
    """Standard conditions for a phase, keeping lastTransitionTime where a condition's status did not change."""
    truth = {
        ConditionType.READY: ready,
        ConditionType.RUNNING: phase == Phase.RUNNING,
        ConditionType.SUSPENDED: phase == Phase.SUSPENDED,
        ConditionType.SUCCEEDED: phase == Phase.SUCCEEDED,
        ConditionType.FAILED: phase == Phase.FAILED,
    }
    previous = {c.get("type"): c for c in old}
    out = []
    for kind, value in truth.items():
        status = "True" if value else "False"
        before = previous.get(kind.value) or {}
        if kind == ConditionType.READY:
            why, text = ("RayJobExists", "the RayJob is created") if value else ("NoRayJob", "")
        elif value:
            why, text = reason, message
        else:
            why, text = f"Not{kind.value}", ""
        changed = before.get("status") != status
        out.append(
            Condition(
                type=kind.value,
                status=status,
                reason=why,
                message=text,
                lastTransitionTime=now
                if changed or not before.get("lastTransitionTime")
                else before["lastTransitionTime"],
                observedGeneration=generation,
            ).model_dump(mode="json", exclude_none=True)
        )
    return out


def differs(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether the operator-owned part of a status changed (ignoring lastTransitionTime-only noise)."""
    return any((old.get(k) or None) != (new.get(k) or None) for k in OWNED)


def _url(value: str | None) -> str | None:
    if not value:
        return None
    return value if "://" in value else f"http://{value}"
