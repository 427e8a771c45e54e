"""The FastAPI application: TrainingJobs at Kubernetes-style paths over one SDK backend (kube or local).

Every request: authenticate (TokenReview) -> authorize the verb (SubjectAccessReview) -> parse and validate
(the shared spec parser: 422 with `kubetrain validate`'s field paths) -> one backend call. Client mistakes
are 4xx Status objects; a 5xx means our bug or an unreachable cluster.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..client import errors
from ..spec import Problem, SpecError, TrainingJob, load_job
from .auth import KubeAuth, NoAuth
from .models import Status, TrainingJobList, TrainingJobObject, status
from .store import BackendStore, KubeStore

log = logging.getLogger("kubetrain.api")

ROOT = "/apis/kubetrain.dev/v1alpha1/namespaces/{namespace}/trainingjobs"
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
SELECTOR = re.compile(r"^\s*[A-Za-z0-9./_-]{1,253}\s*=\s*[A-Za-z0-9._-]{0,63}\s*$")
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")
ERRORS = {code: {"model": Status} for code in (401, 403, 404, 409, 413, 415, 422)}

EXAMPLE = {  # shown in /docs; the fuzz test also sends it
    "apiVersion": "kubetrain.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "example", "labels": {"team": "nlp"}},
    "spec": {"model": {"name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct"},
             "data": {"train": "s3://datasets/dates/train.jsonl", "format": "instruction"}},
}  # fmt: skip

NS = Path(..., pattern=DNS_LABEL, max_length=63, description="Namespace.")
NAME = Path(..., pattern=DNS_LABEL, max_length=63, description="TrainingJob name.")


class Measure:
    """Pure ASGI middleware counting requests and timing them by route (BaseHTTPMiddleware costs far more)."""

    def __init__(self, app: Any, requests: Counter, latency: Histogram):
        self.app, self.requests, self.latency = app, requests, latency

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, code = time.perf_counter(), [500]

        async def sending(message: dict) -> None:
            if message["type"] == "http.response.start":
                code[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.requests.labels(scope["method"], route, str(code[0])).inc()
            self.latency.labels(scope["method"], route).observe(time.perf_counter() - start)


class TooLarge(Exception):
    pass


def create_app(store: KubeStore | BackendStore, auth: KubeAuth | NoAuth, max_body: int = 1 << 20) -> FastAPI:
    # FastAPI's native OpenTelemetry hooks off: /metrics (Prometheus, Measure below) is the API's telemetry,
    # and the hooks cost a provider lookup per request even with no provider configured.
    app = FastAPI(title="kubetrain", version=__version__, telemetry={"tracing": False, "metrics": False, "logs": False},
                  description="TrainingJobs (kubetrain.dev/v1alpha1) over HTTP. Authenticate with a Kubernetes "
                  "bearer token; Kubernetes RBAC on trainingjobs decides what you may do in each namespace.")  # fmt: skip
    registry = CollectorRegistry()
    requests = Counter(
        "kubetrain_api_requests_total", "API requests", ["method", "route", "code"], registry=registry
    )
    latency = Histogram(
        "kubetrain_api_request_seconds", "API request latency", ["method", "route"], registry=registry
    )

    app.add_middleware(Measure, requests=requests, latency=latency)

    @app.exception_handler(errors.ClientError)
    async def client_error(request: Request, e: errors.ClientError) -> JSONResponse:
        causes = None
        if isinstance(e, errors.Invalid):
            causes = [
                {"field": p.path, "message": p.message, **({"line": p.line} if p.line else {})}
                for p in e.problems
            ]
        headers = {"WWW-Authenticate": "Bearer"} if e.http_status == 401 else None
        return JSONResponse(status(e.http_status, str(e), causes), status_code=e.http_status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, e: RequestValidationError) -> JSONResponse:
        causes = [
            {"field": ".".join(str(x) for x in err["loc"]), "message": err["msg"]} for err in e.errors()
        ]
        return JSONResponse(status(422, "invalid request", causes), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(status(e.status_code, str(e.detail)), status_code=e.status_code)

    @app.exception_handler(TooLarge)
    async def too_large(request: Request, e: TooLarge) -> JSONResponse:
        return JSONResponse(status(413, f"the request body is larger than {max_body} bytes"), status_code=413)

    async def check(request: Request, verb: str, namespace: str, name: str = "", sub: str = "") -> Any:
        user = await auth.authenticate(request.headers.get("authorization"))
        await auth.authorize(user, verb, namespace, name, sub)
        return user

    @app.get("/healthz", response_class=PlainTextResponse, include_in_schema=False)
    async def healthz() -> str:
        return "ok"

    @app.get("/readyz", response_class=PlainTextResponse, include_in_schema=False)
    async def readyz() -> str:
        return "ok"

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    body_doc = {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/TrainingJob"}, "example": EXAMPLE},
        "application/yaml": {"schema": {"type": "string", "description": "A TrainingJob as YAML"}}}}}  # fmt: skip

    @app.post(ROOT, status_code=201, response_model=None, openapi_extra=body_doc, tags=["trainingjobs"],
              responses={201: {"model": TrainingJobObject}, **ERRORS})  # fmt: skip
    async def create(request: Request, namespace: str = NS) -> Response:
        """Create a TrainingJob from JSON or YAML (Content-Type application/yaml)."""
        user = await check(request, "create", namespace)
        text = await read_body(request, max_body)
        ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
        if ctype not in ("application/json", *YAML_TYPES):
            raise StarletteHTTPException(
                415, f"Content-Type {ctype!r}: send application/json or application/yaml"
            )
        try:
            job = load_job(text, json_only=ctype == "application/json")
        except SpecError as e:
            raise errors.Invalid(e.problems) from None
        if job.metadata.namespace not in (None, namespace):
            raise errors.Invalid([Problem("metadata.namespace", f"got {job.metadata.namespace!r}: does not match the namespace of the request ({namespace!r})")])  # fmt: skip
        return _json(await store.create(job, namespace, user.name), 201)

    @app.get(
        ROOT,
        response_model=None,
        tags=["trainingjobs"],
        responses={200: {"model": TrainingJobList}, **ERRORS},
    )
    async def list_jobs(request: Request, namespace: str = NS,
                        labelSelector: str | None = Query(None, max_length=1024, description="e.g. team=nlp,stage=dev")) -> Response:  # fmt: skip
        """List the TrainingJobs of a namespace."""
        await check(request, "list", namespace)
        return _json(await store.list(namespace, _selector(labelSelector)))

    @app.get(ROOT + "/{name}", response_model=None, tags=["trainingjobs"],
             responses={200: {"model": TrainingJobObject}, **ERRORS})  # fmt: skip
    async def get_job(request: Request, namespace: str = NS, name: str = NAME) -> Response:
        """Read a TrainingJob."""
        await check(request, "get", namespace, name)
        return _json(await store.get(name, namespace))

    @app.get(ROOT + "/{name}/status", response_model=None, tags=["trainingjobs"],
             responses={200: {"model": TrainingJobObject}, **ERRORS})  # fmt: skip
    async def get_status(request: Request, namespace: str = NS, name: str = NAME) -> Response:
        """Read a TrainingJob through its status subresource (phase, conditions, progress)."""
        await check(request, "get", namespace, name, "status")
        return _json(await store.get(name, namespace))

    @app.patch(ROOT + "/{name}", response_model=None, tags=["trainingjobs"],
               openapi_extra={"requestBody": {"required": True, "content": {"application/merge-patch+json": {"schema": {
                   "type": "object", "description": "Only spec.lifecycle.suspend may change: {\"spec\": {\"lifecycle\": {\"suspend\": true}}}"}}}}},
               responses={200: {"model": TrainingJobObject}, **ERRORS})  # fmt: skip
    async def patch_job(request: Request, namespace: str = NS, name: str = NAME) -> Response:
        """Suspend or resume a TrainingJob (a JSON merge patch of spec.lifecycle.suspend)."""
        await check(request, "patch", namespace, name)
        text = await read_body(request, max_body)
        try:
            patch = json.loads(text)
        except ValueError:
            raise errors.Invalid([Problem("", "the body is not JSON")]) from None
        suspend = _suspend_of(patch)
        if suspend is None:
            raise errors.Invalid([Problem("spec.lifecycle.suspend", "only this field can be patched here (true or false); delete and re-create a job to change anything else")])  # fmt: skip
        return _json(await store.set_suspended(name, namespace, suspend))

    @app.delete(
        ROOT + "/{name}",
        response_model=None,
        tags=["trainingjobs"],
        responses={200: {"model": Status}, **ERRORS},
    )
    async def delete_job(request: Request, namespace: str = NS, name: str = NAME) -> JSONResponse:
        """Delete a TrainingJob (its RayJob goes with it)."""
        await check(request, "delete", namespace, name)
        await store.delete(name, namespace)
        return JSONResponse(status(200, f'trainingjob "{name}" deleted', name=name, kind="trainingjobs"))

    @app.get(ROOT + "/{name}/logs", response_class=PlainTextResponse, tags=["trainingjobs"], responses=ERRORS)
    async def logs(request: Request, namespace: str = NS, name: str = NAME, follow: bool = False) -> Response:
        """The job's output, as text; follow=true streams until the job ends."""
        await check(request, "get", namespace, name, "logs")
        lines = store.logs(name, namespace, follow)
        first = await run_in_threadpool(next, lines, None)  # errors (404) surface before the response starts
        if first is None:
            return PlainTextResponse("")

        def stream() -> Iterator[bytes]:
            yield (first + "\n").encode()
            for line in lines:
                yield (line + "\n").encode()

        return StreamingResponse(stream(), media_type="text/plain; charset=utf-8")

    def openapi() -> dict[str, Any]:
        """FastAPI's document plus the TrainingJob input schema from the spec models (the request body)."""
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            doc = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            schema = TrainingJob.model_json_schema(ref_template="#/components/schemas/{model}")
            components = doc.setdefault("components", {}).setdefault("schemas", {})
            for key, value in schema.pop("$defs", {}).items():
                components.setdefault(key, value)
            components["TrainingJob"] = schema
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


BODY_TIMEOUT_S = (
    30.0  # a client that trickles its body in is cut off (with the upstream timeouts: bounded requests)
)


async def read_body(request: Request, limit: int) -> str:
    """The body, refused (413) past `limit` bytes without reading the rest, and (408) after BODY_TIMEOUT_S."""
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        raise TooLarge()
    chunks: list[bytes] = []

    async def read() -> None:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise TooLarge()
            chunks.append(chunk)

    try:
        await asyncio.wait_for(read(), BODY_TIMEOUT_S)
    except asyncio.TimeoutError:
        raise StarletteHTTPException(
            408, f"the request body did not arrive within {BODY_TIMEOUT_S:g} s"
        ) from None
    try:
        return b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError:
        raise errors.Invalid([Problem("", "the body is not UTF-8 text")]) from None


def _selector(text: str | None) -> dict[str, str]:
    out = {}
    for term in filter(None, (text or "").split(",")):
        if not SELECTOR.match(term):
            raise errors.Invalid(
                [Problem("labelSelector", f"got {term!r}: only key=value terms are supported")]
            )
        key, _, value = term.partition("=")
        out[key.strip()] = value.strip()
    return out


def _suspend_of(patch: Any) -> bool | None:
    """The suspend value of {"spec": {"lifecycle": {"suspend": bool}}}, or None for any other patch."""
    try:
        suspend = patch["spec"]["lifecycle"]["suspend"]
    except (TypeError, KeyError):
        return None
    return (
        suspend
        if isinstance(suspend, bool) and patch == {"spec": {"lifecycle": {"suspend": suspend}}}
        else None
    )


def _json(body: bytes, code: int = 200) -> Response:
    return Response(body, status_code=code, media_type="application/json")
