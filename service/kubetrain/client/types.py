"""What the SDK returns: a job as the cluster reports it, with the CRD's typed status."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, ValidationError

from ..schema.status import TERMINAL, Phase, TrainingJobStatus


class JobInfo(BaseModel):
    """One TrainingJob: identity, labels, the spec as submitted and the status the operator (or runner) keeps."""

    name: str
    namespace: str = "default"
    labels: dict[str, str] = Field(default_factory=dict)
    uid: str | None = None
    created: str | None = None
    spec: dict[str, Any] = Field(default_factory=dict)
    status: TrainingJobStatus = Field(default_factory=TrainingJobStatus)

    @property
    def phase(self) -> str:
        return str(self.status.phase or Phase.PENDING.value)

    @property
    def finished(self) -> bool:
        return self.phase in {p.value for p in TERMINAL}

    @classmethod
    def from_object(cls, obj: dict[str, Any]) -> JobInfo:
        """From a TrainingJob object as the Kubernetes API (or the kubetrain API) returns it."""
        meta = obj.get("metadata") or {}
        return cls(
            name=meta.get("name", ""),
            namespace=meta.get("namespace") or "default",
            labels=meta.get("labels") or {},
            uid=meta.get("uid"),
            created=meta.get("creationTimestamp"),
            spec=obj.get("spec") or {},
            status=parse_status(obj.get("status")),
        )

    def to_object(self) -> dict[str, Any]:
        """Back to the Kubernetes object shape (what the REST API serves)."""
        meta: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if self.labels:
            meta["labels"] = self.labels
        if self.uid:
            meta["uid"] = self.uid
        if self.created:
            meta["creationTimestamp"] = self.created
        return {"apiVersion": "kubetrain.dev/v1alpha1", "kind": "TrainingJob", "metadata": meta,
                "spec": self.spec, "status": self.status.dump()}  # fmt: skip


def parse_status(raw: Any) -> TrainingJobStatus:
    """The typed status; fields a newer operator added are dropped rather than failing the read."""
    if not isinstance(raw, dict):
        return TrainingJobStatus()
    try:
        return TrainingJobStatus.model_validate(raw)
    except ValidationError:
        known = {k: v for k, v in raw.items() if k in TrainingJobStatus.model_fields}
        try:
            return TrainingJobStatus.model_validate(known)
        except ValidationError:
            return TrainingJobStatus(phase=known.get("phase"), message=str(known.get("message") or ""))
