"""Response shapes for the OpenAPI document, built from the spec and status models (no second schema)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from ..schema.status import TrainingJobStatus
from ..spec import TrainingJob


class TrainingJobObject(TrainingJob):
    """A TrainingJob as stored: the submitted spec plus the status the operator and runtime keep."""

    status: TrainingJobStatus | None = Field(None, description="Observed state (operator and runtime).")


class ListMeta(BaseModel):
    resourceVersion: str | None = None


class TrainingJobList(BaseModel):
    """Jobs in one namespace."""

    apiVersion: str = "kubetrain.dev/v1alpha1"
    kind: str = "TrainingJobList"
    metadata: ListMeta = Field(default_factory=ListMeta)
    items: list[TrainingJobObject] = Field(default_factory=list)


class StatusCause(BaseModel):
    field: str = Field("", description="Dotted field path, as `kubetrain validate` prints it.")
    message: str
    line: int | None = Field(None, description="Line in the submitted YAML, when known.")


class StatusDetails(BaseModel):
    name: str | None = None
    kind: str | None = None
    causes: list[StatusCause] = Field(default_factory=list)


class Status(BaseModel):
    """An error (or a deletion) in the shape of a Kubernetes metav1.Status."""

    apiVersion: str = "v1"
    kind: str = "Status"
    status: str = Field(..., description="Success or Failure.")
    code: int
    reason: str = ""
    message: str = ""
    details: StatusDetails | None = None


REASONS = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 405: "MethodNotAllowed", 408: "Timeout",
           409: "AlreadyExists", 413: "RequestEntityTooLarge", 415: "UnsupportedMediaType", 422: "Invalid",
           500: "InternalError", 503: "ServiceUnavailable", 504: "Timeout"}  # fmt: skip


def status(
    code: int, message: str, causes: list[dict[str, Any]] | None = None, **details: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {"apiVersion": "v1", "kind": "Status", "status": "Failure" if code >= 400 else "Success",
                            "code": code, "reason": REASONS.get(code, ""), "message": message}  # fmt: skip
    if causes or details:
        body["details"] = {**details, **({"causes": causes} if causes else {})}
    return body
