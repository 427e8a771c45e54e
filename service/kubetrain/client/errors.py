"""The SDK's one set of errors: every backend raises these, the CLI maps them to exit codes, the API to HTTP."""

from __future__ import annotations

from typing import Any

from ..spec import Problem


class ClientError(Exception):
    """Something the SDK could not do; `str()` is one line a person can act on."""

    http_status = 500


class Invalid(ClientError):
    """The spec (or another input) is invalid; `problems` names every field, as `kubetrain validate` does."""

    http_status = 422

    def __init__(self, problems: list[Problem], source: str = ""):
        self.problems, self.source = problems, source
        super().__init__("; ".join(p.render(source) for p in problems) or "invalid input")


class NotFound(ClientError):
    """No such job (in that namespace)."""

    http_status = 404


class AlreadyExists(ClientError):
    """A job of that name exists already (or was changed meanwhile)."""

    http_status = 409


class Unauthorized(ClientError):
    """No credentials, or credentials the cluster does not accept."""

    http_status = 401


class Forbidden(ClientError):
    """Authenticated, but RBAC does not allow this verb on trainingjobs in this namespace."""

    http_status = 403


class Unavailable(ClientError):
    """The backend (cluster, API server, local runner) cannot be reached or answered with an error."""

    http_status = 503


class WaitTimeout(ClientError):
    """wait() gave up before the job reached the phase asked for."""

    http_status = 504


class JobFailed(ClientError):
    """The job ended in a phase other than the one waited for (e.g. Failed while waiting for Succeeded)."""

    http_status = 409


def from_status(code: int, message: str, problems: list[Problem] | None = None) -> ClientError:
    """The error for an HTTP status code (Kubernetes API or kubetrain API answers)."""
    if code == 422 or (code == 400 and problems):
        return Invalid(problems or [Problem("", message)])
    kinds: dict[int, type[ClientError]] = {
        401: Unauthorized,
        403: Forbidden,
        404: NotFound,
        409: AlreadyExists,
    }
    return kinds.get(code, Unavailable)(message if code in kinds else f"HTTP {code}: {message}")


def from_answer(r: Any) -> ClientError:
    """The error for an HTTP error answer carrying a metav1.Status (the Kubernetes API's, or kubetrain's API's,
    whose 422 causes name the field and line as `kubetrain validate` does)."""
    try:
        body = r.json()
    except ValueError:
        body = {}
    body = body if isinstance(body, dict) else {}
    message = str(body.get("message") or r.text[:300] or r.reason_phrase)
    problems = [_problem(c) for c in (body.get("details") or {}).get("causes") or []]
    if r.status_code == 422 and not problems:
        problems = [Problem("", message)]
    return from_status(r.status_code, message, problems or None)


def _problem(cause: dict[str, Any]) -> Problem:
    field, message = str(cause.get("field") or ""), str(cause.get("message") or "")
    if not field and ": " in message:  # the apiserver's CRD schema causes: "spec.x: Invalid value: ..."
        field, message = message.split(": ", 1)
    return Problem(field, message, cause.get("line"))
