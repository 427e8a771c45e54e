"""A Kubernetes API for tests: kmock's emulator over real HTTP, with the shims that make kubectl and kopf work.

kmock (pinned in pyproject.toml) serves HTTP, parses requests into (action, resource, namespace, name,
subresource), serves discovery and keeps the request log. The shims below supply what kmock 0.8 lacks
(DESIGN.md lists the gaps): 201 on create; uid, resourceVersion, generation, creationTimestamp and the
namespace from the URL; /api/v1/namespaces; PUT; an isolated status subresource; label/field selectors;
watch from a resourceVersion with timeoutSeconds, served as JSON; lists with kind; standard error reasons;
subresources in discovery without short names; CRDs registering their resources; admission against the
CRD schema (422) and `self == oldSelf` rules; ownerReference garbage collection; server-side table
printing from additionalPrinterColumns; /openapi/v3 (for `kubectl explain` and server-side field validation).

Run alone (`python emulator.py [CRD files]`) it serves until stdin closes, printing its URL first.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import itertools
import json
import re
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import aiohttp.web
import kmock
from kmock._internal import rendering

from kubetrain.schema.openapi import crd_validator, errors

CORE = {
    # resource key: (kind, namespaced)
    "v1/configmaps": ("ConfigMap", True),
    "v1/events": ("Event", True),
    "v1/secrets": ("Secret", True),
    "v1/serviceaccounts": ("ServiceAccount", True),
    "v1/services": ("Service", True),
    "events.k8s.io/v1/events": ("Event", True),
    "apps/v1/deployments": ("Deployment", True),
    "rbac.authorization.k8s.io/v1/clusterroles": ("ClusterRole", False),
    "rbac.authorization.k8s.io/v1/clusterrolebindings": ("ClusterRoleBinding", False),
    "rbac.authorization.k8s.io/v1/roles": ("Role", True),
    "rbac.authorization.k8s.io/v1/rolebindings": ("RoleBinding", True),
    "apiextensions.k8s.io/v1/customresourcedefinitions": ("CustomResourceDefinition", False),
}
VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]
NAMESPACES_PATH = re.compile(r"^/api/v1/namespaces(?:/([^/]+))?/?$")
TOKENREVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"
ACCESSREVIEWS = "/apis/authorization.k8s.io/v1/subjectaccessreviews"


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details or {}

    def status(self) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure", "code": self.code,
                "reason": self.reason, "message": self.message, "details": self.details}  # fmt: skip


class Kind:
    """What the emulator knows about one served resource."""

    def __init__(self, key: str, kind: str, namespaced: bool, crd: dict | None = None, version: str = ""):
        self.key, self.kind, self.namespaced = key, kind, namespaced
        group_version = key.rsplit("/", 1)[0]
        self.api_version = group_version
        self.plural = key.rsplit("/", 1)[1]
        self.status_subresource = False
        self.validator = None
        self.columns: list[dict[str, Any]] = []
        self.immutable: list[tuple[list[str], str, bool]] = []
        self.schema: dict[str, Any] | None = None
        if crd is not None:
            served = next(v for v in crd["spec"]["versions"] if v["name"] == version)
            self.status_subresource = "status" in (served.get("subresources") or {})
            self.validator = crd_validator(crd, version)
            self.schema = served["schema"]["openAPIV3Schema"]
            self.columns = served.get("additionalPrinterColumns") or []
            self.immutable = list(_transition_rules(served["schema"]["openAPIV3Schema"], []))


HAS_RULE = re.compile(r"^has\(self\.(\w+)\) == has\(oldSelf\.\1\)$")


def _transition_rules(node: dict[str, Any], path: list[str]) -> Iterator[tuple[list[str], str, bool]]:
    """The CEL transition rules the emulator understands: (path, message, presence-only).

    `self == oldSelf` (evaluated when the field exists before and after, as in the apiserver) and
    conjunctions of `has(self.x) == has(oldSelf.x)`.
    """
    for rule in node.get("x-kubernetes-validations") or []:
        text, message = rule.get("rule", ""), rule.get("message", "")
        if text == "self == oldSelf":
            yield path, message, False
        else:
            for term in text.split(" && "):
                match = HAS_RULE.match(term.strip())
                if match:
                    yield [*path, match.group(1)], message, True
    for name, child in (node.get("properties") or {}).items():
        yield from _transition_rules(child, [*path, name])


def _dig(obj: Any, path: list[str]) -> Any:
    for key in path:
        obj = obj.get(key) if isinstance(obj, dict) else None
    return obj


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (what kubectl and kopf send for custom resources)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def _json_patch(obj: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    out = copy.deepcopy(obj)
    for op in ops:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].lstrip("/").split("/")]
        parent = _dig(out, parts[:-1]) if len(parts) > 1 else out
        if op["op"] in ("add", "replace"):
            if isinstance(parent, list):
                idx = len(parent) if parts[-1] == "-" else int(parts[-1])
                parent.insert(idx, op["value"]) if op["op"] == "add" else parent.__setitem__(idx, op["value"])
            else:
                parent[parts[-1]] = op["value"]
        elif op["op"] == "remove":
            parent.pop(int(parts[-1]) if isinstance(parent, list) else parts[-1])
        elif op["op"] == "test" and _dig(out, parts) != op["value"]:
            raise ApiError(422, "Invalid", f"test failed at {op['path']}")
    return out


def _match_labels(labels: dict[str, str], selector: str) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k.strip()) == v.strip():
                return False
        elif "=" in term:
            k, v = term.replace("==", "=").split("=", 1)
            if labels.get(k.strip()) != v.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def _match_fields(obj: dict[str, Any], selector: str) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        negate = "!=" in term
        k, v = term.replace("!=", "=").replace("==", "=").split("=", 1)
        actual = _dig(obj, k.strip().split("."))
        if (str(actual) == v.strip()) == negate:
            return False
    return True


def _jsonpath(obj: Any, path: str) -> Any:
    return _dig(obj, [p for p in path.strip().lstrip(".").split(".") if p])


def _age(stamp: str | None) -> str | None:
    """Date columns print as an age, like the apiserver's table convertor."""
    if not stamp:
        return None
    then = datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
    seconds = int((datetime.datetime.now(datetime.timezone.utc) - then).total_seconds())
    return (
        f"{seconds}s" if seconds < 120 else f"{seconds // 60}m" if seconds < 7200 else f"{seconds // 3600}h"
    )


class Emulator(kmock.KubernetesEmulator):
    """kmock's KubernetesEmulator with a Kubernetes-shaped object store (see the module docstring)."""

    def setup(self) -> None:
        self.store: dict[str, dict[tuple[str | None, str], dict[str, Any]]] = {}
        self.kinds: dict[str, Kind] = {}
        self.events: dict[str, list[tuple[int, dict[str, Any]]]] = {}
        self.rv = itertools.count(1)
        self.changed = asyncio.Event()
        self.namespaces: dict[str, dict[str, Any]] = {}
        self.log: list[tuple[str, str, str | None, str]] = []  # (verb, resource, subresource, user agent)
        self.hold: tuple[str, asyncio.Event] | None = None  # (resource key, release): answer creates late
        self.failures: dict[str, int] = {}  # resource key -> how many creates to refuse with a 500
        self.users: dict[str, dict[str, Any]] = {}  # bearer token -> TokenReview user (add_user)
        self.rules: list[dict[str, Any]] = []  # RBAC-like grants the SubjectAccessReview checks (allow)
        for key, (kind, namespaced) in CORE.items():
            self.serve(Kind(key, kind, namespaced))
        for name in ("default",):
            self.namespaces[name] = self._stamp(
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
            )

    def serve(self, kind: Kind) -> None:
        self.kinds[kind.key] = kind
        self.store.setdefault(kind.key, {})
        self.events.setdefault(kind.key, [])
        self.resources[self._ref(kind.key)] = kmock.ResourceInfo(
            kind=kind.kind, singular=kind.kind.lower(), namespaced=kind.namespaced, verbs=VERBS,
        )  # fmt: skip

    @staticmethod
    def _ref(key: str) -> kmock.resource:
        parts = key.split("/")
        return kmock.resource("", *parts) if len(parts) == 2 else kmock.resource(*parts)

    async def _serve_version(self, request: rendering.Request) -> dict[str, Any]:
        """APIResourceList with proper subresource entries (kmock copies short names onto them)."""
        res = request.resource
        prefix = f"{res.group}/{res.version}/" if res.group else f"{res.version}/"
        kinds = [
            k
            for key, k in self.kinds.items()
            if key.startswith(prefix) and key.count("/") == prefix.count("/")
        ]
        if res.group == "" and res.version == "v1":
            kinds.append(Kind("v1/namespaces", "Namespace", False))
        if not kinds:
            raise kmock.KubernetesResourceNotFoundError()
        out = []
        for kind in kinds:
            info = self.resources[self._ref(kind.key)] if self._ref(kind.key) in self.resources else None
            out.append({"name": kind.plural, "singularName": kind.kind.lower(), "namespaced": kind.namespaced,
                        "kind": kind.kind, "verbs": VERBS,
                        "shortNames": sorted(info.shortnames) if info else [],
                        "categories": sorted(info.categories) if info else []})  # fmt: skip
            if kind.status_subresource:
                out.append({"name": f"{kind.plural}/status", "singularName": "", "namespaced": kind.namespaced,
                            "kind": kind.kind, "verbs": ["get", "patch", "update"]})  # fmt: skip
        return {
            "apiVersion": "v1",
            "kind": "APIResourceList",
            "groupVersion": prefix.rstrip("/"),
            "resources": out,
        }

    def register_crd(self, crd: dict[str, Any]) -> None:
        names, group = crd["spec"]["names"], crd["spec"]["group"]
        for version in crd["spec"]["versions"]:
            if not version.get("served", True):
                continue
            kind = Kind(f"{group}/{version['name']}/{names['plural']}", names["kind"],
                        crd["spec"].get("scope", "Namespaced") == "Namespaced", crd, version["name"])  # fmt: skip
            self.serve(kind)
            info = self.resources[self._ref(kind.key)]
            info.shortnames.update(names.get("shortNames") or [])
            info.categories.update(names.get("categories") or [])
            info.singular = names.get("singular") or names["kind"].lower()

    # -- HTTP entry points ------------------------------------------------------------------------

    async def __call__(self, raw: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        if raw.method == "POST" and raw.path.rstrip("/") in (TOKENREVIEWS, ACCESSREVIEWS):
            return await self._review(raw)
        match = NAMESPACES_PATH.match(raw.path)
        if match:  # kmock 0.8 cannot parse these paths
            await raw.read()
            verb = {"GET": "get" if match.group(1) else "list", "POST": "create"}.get(
                raw.method, raw.method.lower()
            )
            self.log.append((verb, "v1/namespaces", None, raw.headers.get("User-Agent", "")))
            return await self._namespaces(raw, match.group(1))
        if raw.path.startswith("/openapi/v3"):
            await raw.read()
            return self._openapi(raw.path)
        return await super().__call__(raw)

    def _openapi(self, path: str) -> aiohttp.web.StreamResponse:
        """/openapi/v3: every served kind (CRD schemas in full) and fieldValidation on writes, so that
        `kubectl explain` works and `kubectl apply` leaves validation to the server (the 422 shim)."""
        served: dict[str, list[Kind]] = {}
        for key, kind in [*self.kinds.items(), ("v1/namespaces", Kind("v1/namespaces", "Namespace", False))]:
            gv = key.rsplit("/", 1)[0]
            served.setdefault(gv if "/" in gv else f"core/{gv}", []).append(kind)

        def doc_path(gv: str) -> str:
            return f"api/{gv.split('/')[1]}" if gv.startswith("core/") else f"apis/{gv}"

        if path.rstrip("/") == "/openapi/v3":
            paths = {doc_path(gv): {"serverRelativeURL": f"/openapi/v3/{doc_path(gv)}"} for gv in served}
            return aiohttp.web.json_response({"paths": paths})
        wanted = path.removeprefix("/openapi/v3/").strip("/")
        gv = next((g for g in served if doc_path(g) == wanted), None)
        if gv is None:
            e = ApiError(404, "NotFound", f"no OpenAPI document for {wanted}")
            return aiohttp.web.json_response(e.status(), status=404)
        group, version = gv.split("/")
        group = "" if group == "core" else group
        schemas, paths = {}, {}
        for kind in served[gv]:
            rdns = ".".join(reversed(group.split("."))) if group else "io.k8s.api.core"
            gvk = {"group": group, "version": version, "kind": kind.kind}
            name = f"{rdns}.{version}.{kind.kind}"
            schema = kind.schema or {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
            schemas[name] = {**schema, "x-kubernetes-group-version-kind": [gvk]}
            ref = {"$ref": f"#/components/schemas/{name}"}
            ok = {"200": {"description": "OK", "content": {"application/json": {"schema": ref}}}}
            fv = [{"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}]
            root = f"/{doc_path(gv)}"
            scoped = (
                f"{root}/namespaces/{{namespace}}/{kind.plural}"
                if kind.namespaced
                else f"{root}/{kind.plural}"
            )
            op = {"x-kubernetes-group-version-kind": gvk, "responses": ok}
            paths[f"{scoped}/{{name}}"] = {
                "get": {**op, "x-kubernetes-action": "get"},
                "patch": {**op, "x-kubernetes-action": "patch", "parameters": fv},
            }
            paths[scoped] = {"post": {**op, "x-kubernetes-action": "post", "parameters": fv}}
        doc = {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.32.0"}, "paths": paths,
               "components": {"schemas": schemas}}  # fmt: skip
        return aiohttp.web.json_response(doc)

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        if request.resource is None or not request.resource.plural:
            return await super()._handle(request)  # discovery
        res = request.resource
        key = f"{res.group}/{res.version}/{res.plural}" if res.group else f"{res.version}/{res.plural}"
        verb = self._verb(request)
        self.log.append((verb, key, request.subresource, request.headers.get("User-Agent", "")))
        try:
            kind = self.kinds.get(key)
            if kind is None:
                raise ApiError(404, "NotFound", f"the server could not find the requested resource ({key})")
            if verb == "watch":
                return await self._watch(request, kind)
            if verb == "create" and self.failures.get(key):
                self.failures[key] -= 1
                raise ApiError(500, "InternalError", "injected failure (emulator.fail_creates)")
            result, code = self._dispatch(verb, request, kind)
            if verb == "create" and self.hold is not None and self.hold[0] == key:
                await self.hold[1].wait()  # stored, but the client hears nothing yet (a crash window)
            if verb in ("get", "list") and "as=Table" in request.headers.get("Accept", "") and kind.columns:
                result = self._table(kind, result)
            return aiohttp.web.json_response(result, status=code)
        except ApiError as e:
            return aiohttp.web.json_response(e.status(), status=e.code)

    @staticmethod
    def _verb(request: rendering.Request) -> str:
        method, named = request.method.value.upper(), request.name is not None
        if request.params.get("watch") in ("true", "1"):
            return "watch"
        return {("GET", True): "get", ("GET", False): "list", ("POST", False): "create", ("PUT", True): "update",
                ("PATCH", True): "patch", ("DELETE", True): "delete"}.get((method, named), method.lower())  # fmt: skip

    def _dispatch(self, verb: str, request: rendering.Request, kind: Kind) -> tuple[dict[str, Any], int]:
        ns = request.namespace
        if verb == "list":
            return self._list(kind, ns, request.params), 200
        if verb == "create":
            return self.create(kind, ns, request.data or {}, dry_run="dryRun" in request.params), 201
        name = request.name
        assert name is not None
        if verb == "get":
            return copy.deepcopy(self._get(kind, ns, name)), 200
        if verb in ("patch", "update"):
            ctype = request.headers.get("Content-Type", "")
            return self.update(kind, ns, name, request.data, verb, ctype, request.subresource), 200
        if verb == "delete":
            return self.delete(kind, ns, name), 200
        raise ApiError(405, "MethodNotAllowed", f"{verb} is not supported")

    # -- authentication and authorization: a table of users (by token) and RBAC-like rules ----------

    def add_user(self, token: str, username: str, groups: tuple[str, ...] = ()) -> None:
        """A bearer token the TokenReview accepts, as this user in these groups."""
        self.users[token] = {"username": username, "uid": f"uid-{username}",
                                                         "groups": [*groups, "system:authenticated"]}  # fmt: skip

    def allow(self, subject: str, namespace: str, verbs: tuple[str, ...], resources: tuple[str, ...] = ("trainingjobs",),
              group: str = "kubetrain.dev", names: tuple[str, ...] = ()) -> None:  # fmt: skip
        """An RBAC grant: subject 'NAME' (a user) or 'group:NAME', namespace or '*', verbs and resources
        ('trainingjobs', 'trainingjobs/status', ..., '*'); `names` limits it as RBAC's resourceNames do
        (then a review without a name is not allowed by it)."""
        self.rules.append(
            {
                "subject": subject,
                "namespace": namespace,
                "verbs": set(verbs),
                "resources": set(resources),
                "group": group,
                "names": set(names),
            }
        )

    def _allowed(self, spec: dict[str, Any]) -> bool:
        attrs = spec.get("resourceAttributes") or {}
        resource = attrs.get("resource", "") + (
            f"/{attrs['subresource']}" if attrs.get("subresource") else ""
        )
        subjects = {spec.get("user", "")} | {f"group:{g}" for g in spec.get("groups") or []}
        return any(
            rule["subject"] in subjects
            and rule["namespace"] in ("*", attrs.get("namespace"))
            and rule["verbs"] & {"*", attrs.get("verb")}
            and rule["resources"] & {"*", resource}
            and rule["group"] in ("*", attrs.get("group", ""))
            and (not rule["names"] or attrs.get("name") in rule["names"])
            for rule in self.rules
        )

    async def _review(self, raw: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        """TokenReview (authentication.k8s.io/v1) and SubjectAccessReview (authorization.k8s.io/v1)."""
        body = await raw.json()
        kind = "tokenreviews" if raw.path.rstrip("/") == TOKENREVIEWS else "subjectaccessreviews"
        group = "authentication.k8s.io" if kind == "tokenreviews" else "authorization.k8s.io"
        self.log.append(("create", f"{group}/v1/{kind}", None, raw.headers.get("User-Agent", "")))
        spec = body.get("spec") or {}
        if kind == "tokenreviews":
            user = self.users.get(spec.get("token", ""))
            status: dict[str, Any] = {"authenticated": True, "user": user} if user else {"authenticated": False,
                                                                                       "error": "invalid bearer token"}  # fmt: skip
        else:
            allowed = self._allowed(spec)
            status = {"allowed": allowed, **({} if allowed else {"reason": "no RBAC rule allows it"})}
        return aiohttp.web.json_response({**body, "status": status}, status=201)

    # -- the object store ---------------------------------------------------------------------------

    def _stamp(self, obj: dict[str, Any], old: dict[str, Any] | None = None) -> dict[str, Any]:
        meta = obj.setdefault("metadata", {})
        if old is None:
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = _now()
            meta["generation"] = 1
        else:
            for k in ("uid", "creationTimestamp"):
                meta[k] = old["metadata"][k]
            spec_changed = {k: v for k, v in obj.items() if k not in ("metadata", "status")} != {
                k: v for k, v in old.items() if k not in ("metadata", "status")}  # fmt: skip
            meta["generation"] = old["metadata"].get("generation", 1) + (1 if spec_changed else 0)
        meta["resourceVersion"] = str(next(self.rv))
        return obj

    def _publish(self, kind: Kind, type_: str, obj: dict[str, Any]) -> None:
        self.events[kind.key].append(
            (int(obj["metadata"]["resourceVersion"]), {"type": type_, "object": copy.deepcopy(obj)})
        )
        self.changed.set()
        self.changed = asyncio.Event()

    def _get(self, kind: Kind, ns: str | None, name: str) -> dict[str, Any]:
        obj = self.store[kind.key].get((ns if kind.namespaced else None, name))
        if obj is None:
            group = kind.key.split("/")[0] if kind.key.count("/") == 2 else ""
            raise ApiError(404, "NotFound", f'{kind.plural}.{group} "{name}" not found'.replace(". ", " "),
                           {"name": name, "group": group, "kind": kind.plural})  # fmt: skip
        return obj

    def _admit(self, kind: Kind, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        name = obj.get("metadata", {}).get("name", "")
        causes: list[str] = []
        if kind.validator is not None:
            causes += errors(
                kind.validator,
                {k: v for k, v in obj.items() if k != "status"} if kind.status_subresource else obj,
            )
        if old is not None:
            for path, message, presence in kind.immutable:
                before, after = _dig(old, path), _dig(obj, path)
                if presence and (before is None) != (after is None):
                    causes.append(f"{'.'.join(path[:-1])}: Invalid value: {message}")
                elif not presence and before is not None and after is not None and before != after:
                    causes.append(f"{'.'.join(path)}: Invalid value: {message} (rule self == oldSelf)")
        if causes:
            raise ApiError(422, "Invalid", f'{kind.kind} "{name}" is invalid: ' + "; ".join(causes),
                           {"name": name, "kind": kind.kind, "causes": [{"reason": "FieldValueInvalid", "message": c} for c in causes]})  # fmt: skip

    def create(
        self, kind: Kind, ns: str | None, obj: dict[str, Any], dry_run: bool = False
    ) -> dict[str, Any]:
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        if kind.namespaced:
            meta["namespace"] = ns or meta.get("namespace") or "default"
        name = meta.get("name") or (meta.get("generateName", "obj-") + uuid.uuid4().hex[:5])
        meta["name"] = name
        if kind.status_subresource:
            obj.pop("status", None)
        obj.setdefault("apiVersion", kind.api_version)
        obj.setdefault("kind", kind.kind)
        self._admit(kind, obj, None)
        key = (meta.get("namespace"), name)
        if key in self.store[kind.key]:
            raise ApiError(409, "AlreadyExists", f'{kind.plural} "{name}" already exists',
                           {"name": name, "kind": kind.plural})  # fmt: skip
        if dry_run:
            return obj
        self._stamp(obj)
        self.store[kind.key][key] = obj
        self._publish(kind, "ADDED", obj)
        if kind.kind == "CustomResourceDefinition":
            self.register_crd(obj)
        return copy.deepcopy(obj)

    def update(self, kind: Kind, ns: str | None, name: str, body: Any, verb: str, ctype: str,
               subresource: str | None) -> dict[str, Any]:  # fmt: skip
        old = self._get(kind, ns, name)
        if verb == "update":
            new = copy.deepcopy(body)
        elif "json-patch" in ctype:
            new = _json_patch(old, body)
        else:  # merge patch; strategic merge treated alike (good enough for our objects)
            new = merge_patch(old, body)
        if kind.status_subresource:  # the status subresource is isolated from the main resource
            if subresource == "status":
                new = {**copy.deepcopy(old), "status": new.get("status")}
                if new["status"] is None:
                    new.pop("status")
            else:
                new.pop("status", None)
                if "status" in old:
                    new["status"] = copy.deepcopy(old["status"])
        new.setdefault("metadata", {})["name"] = name
        if kind.namespaced:
            new["metadata"]["namespace"] = old["metadata"]["namespace"]
        rv = (body or {}).get("metadata", {}).get("resourceVersion") if isinstance(body, dict) else None
        if rv and rv != old["metadata"]["resourceVersion"]:
            raise ApiError(
                409,
                "Conflict",
                f'the object "{name}" has been modified; please apply your changes to the latest version',
            )
        if subresource != "status":
            self._admit(kind, new, old)
        self._stamp(new, old)
        if new == old:
            return copy.deepcopy(old)
        self.store[kind.key][(new["metadata"].get("namespace"), name)] = new
        self._publish(kind, "MODIFIED", new)
        if kind.kind == "CustomResourceDefinition":
            self.register_crd(new)
        return copy.deepcopy(new)

    def delete(self, kind: Kind, ns: str | None, name: str) -> dict[str, Any]:
        obj = self._get(kind, ns, name)
        del self.store[kind.key][(obj["metadata"].get("namespace"), name)]
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(next(self.rv))
        self._publish(kind, "DELETED", obj)
        self._collect(obj["metadata"]["uid"])
        return obj

    def _collect(self, uid: str) -> None:
        """Garbage collection: dependents whose ownerReferences name a deleted uid go too (background)."""
        for key, objects in self.store.items():
            for (ns, name), obj in list(objects.items()):
                if any(o.get("uid") == uid for o in obj["metadata"].get("ownerReferences") or []):
                    self.delete(self.kinds[key], ns, name)

    def objects(self, key: str) -> list[dict[str, Any]]:
        """A snapshot of every object of a resource (for assertions)."""
        return [copy.deepcopy(o) for o in self.store.get(key, {}).values()]

    def _selected(self, obj: dict[str, Any], ns: str | None, params: dict[str, str]) -> bool:
        meta = obj.get("metadata", {})
        if ns is not None and meta.get("namespace") != ns:
            return False
        if params.get("labelSelector") and not _match_labels(
            meta.get("labels") or {}, params["labelSelector"]
        ):
            return False
        return not params.get("fieldSelector") or _match_fields(obj, params["fieldSelector"])

    def _list(self, kind: Kind, ns: str | None, params: dict[str, str]) -> dict[str, Any]:
        items = [copy.deepcopy(o) for o in self.store[kind.key].values() if self._selected(o, ns, params)]
        items.sort(key=lambda o: (o["metadata"].get("namespace") or "", o["metadata"]["name"]))
        return {"apiVersion": kind.api_version, "kind": f"{kind.kind}List",
                "metadata": {"resourceVersion": str(self._current_rv())}, "items": items}  # fmt: skip

    def _current_rv(self) -> int:
        return max((e[-1][0] for e in self.events.values() if e), default=0)

    async def _watch(self, request: rendering.Request, kind: Kind) -> aiohttp.web.StreamResponse:
        params, ns = request.params, request.namespace
        since = params.get("resourceVersion") or ""
        timeout = float(params.get("timeoutSeconds") or 1800)
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request._raw_request)
        if request.name:
            params = {**params, "fieldSelector": f"metadata.name={request.name}"}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            if since in ("", "0"):
                for obj in self._list(kind, ns, params)["items"]:
                    await response.write(json.dumps({"type": "ADDED", "object": obj}).encode() + b"\n")
                position = len(self.events[kind.key])
            else:
                position = next((i for i, (rv, _) in enumerate(self.events[kind.key]) if rv > int(since)),
                                len(self.events[kind.key]))  # fmt: skip
            while True:
                log = self.events[kind.key]
                while position < len(log):
                    _, event = log[position]
                    position += 1
                    if self._selected(event["object"], ns, params):
                        await response.write(json.dumps(event).encode() + b"\n")
                left = deadline - loop.time()
                transport = request._raw_request.transport if request._raw_request is not None else None
                if left <= 0 or transport is None or transport.is_closing():
                    break  # timed out, or the client went away
                try:
                    await asyncio.wait_for(self.changed.wait(), timeout=min(left, 1.0))
                except asyncio.TimeoutError:
                    pass
            await response.write_eof()
        except (ConnectionError, asyncio.CancelledError):
            pass
        return response

    def _table(self, kind: Kind, result: dict[str, Any]) -> dict[str, Any]:
        items = result.get("items") if result.get("kind", "").endswith("List") else [result]
        columns = [{"name": "Name", "type": "string", "format": "name", "description": "Name", "priority": 0}]
        columns += [{"name": c["name"], "type": c["type"], "format": c.get("format", ""),
                     "description": c.get("description", ""), "priority": c.get("priority", 0)} for c in kind.columns]  # fmt: skip
        rows = []
        for obj in items or []:
            cells = [obj["metadata"]["name"]] + [
                _age(v) if c["type"] == "date" else v
                for c in kind.columns
                for v in [_jsonpath(obj, c["jsonPath"])]
            ]
            partial = {
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": obj["metadata"],
            }
            rows.append({"cells": cells, "object": partial})
        return {"kind": "Table", "apiVersion": "meta.k8s.io/v1",
                "metadata": {"resourceVersion": str(self._current_rv())}, "columnDefinitions": columns, "rows": rows}  # fmt: skip

    async def _namespaces(self, raw: aiohttp.web.BaseRequest, name: str | None) -> aiohttp.web.StreamResponse:
        if raw.method == "GET" and name is None:
            items = [copy.deepcopy(n) for n in self.namespaces.values()]
            return aiohttp.web.json_response(
                {"apiVersion": "v1", "kind": "NamespaceList", "metadata": {}, "items": items}
            )
        if raw.method == "GET":
            if name not in self.namespaces:
                e = ApiError(
                    404, "NotFound", f'namespaces "{name}" not found', {"name": name, "kind": "namespaces"}
                )
                return aiohttp.web.json_response(e.status(), status=404)
            return aiohttp.web.json_response(self.namespaces[name])
        if raw.method == "POST":
            obj = await raw.json()
            name = obj["metadata"]["name"]
            if name in self.namespaces:
                e = ApiError(
                    409,
                    "AlreadyExists",
                    f'namespaces "{name}" already exists',
                    {"name": name, "kind": "namespaces"},
                )
                return aiohttp.web.json_response(e.status(), status=409)
            self.namespaces[name] = self._stamp({"apiVersion": "v1", "kind": "Namespace", **obj})
            return aiohttp.web.json_response(self.namespaces[name], status=201)
        if raw.method == "PATCH" and name in self.namespaces:
            self.namespaces[name] = merge_patch(self.namespaces[name], await raw.json())
            return aiohttp.web.json_response(self.namespaces[name])
        e = ApiError(405, "MethodNotAllowed", f"{raw.method} namespaces is not supported")
        return aiohttp.web.json_response(e.status(), status=405)


class RunningEmulator:
    """The emulator on 127.0.0.1 in a background thread with its own event loop (for sync tests)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="k8s-emulator", daemon=True)
        self.emulator: Emulator | None = None
        self.server: Any = None
        self.url = ""

    def start(self) -> RunningEmulator:
        self.thread.start()
        self.call(self._start())
        return self

    async def _start(self) -> None:
        self.emulator = Emulator()
        self.emulator.setup()
        await self.emulator.__aenter__()
        self.server = kmock.Server(self.emulator, host="127.0.0.1")
        await self.server.__aenter__()
        self.url = f"http://127.0.0.1:{self.server.port}"

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    def run(self, fn: Any, *args: Any) -> Any:
        """Run a sync function on the emulator's loop (safe access to its state)."""

        async def _do() -> Any:
            return fn(*args)

        return self.call(_do())

    def stop(self) -> None:
        async def _stop() -> None:
            await self.server.__aexit__(None, None, None)
            await self.emulator.__aexit__(None, None, None)

        try:
            self.call(_stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)

    def kubeconfig(self, namespace: str = "default") -> str:
        return json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
            "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "emulator", "user": {"token": "emulator-token"}}],
            "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "emulator", "namespace": namespace}}],
        }, indent=1)  # fmt: skip

    # conveniences for tests (run on the emulator's loop)
    def objects(self, key: str) -> list[dict[str, Any]]:
        return self.run(lambda: self.emulator.objects(key))

    def create(self, key: str, obj: dict[str, Any]) -> dict[str, Any]:
        return self.run(
            lambda: self.emulator.create(self.emulator.kinds[key], obj["metadata"].get("namespace"), obj)
        )

    def register_crd(self, crd: dict[str, Any]) -> None:
        self.create("apiextensions.k8s.io/v1/customresourcedefinitions", crd)

    def request_log(self) -> list[tuple[str, str, str | None, str]]:
        return self.run(lambda: list(self.emulator.log))

    def hold_creates(self, key: str) -> None:
        """From now on, creates of this resource are stored but answered only after release()."""
        self.run(lambda: setattr(self.emulator, "hold", (key, asyncio.Event())))

    def fail_creates(self, key: str, times: int) -> None:
        """Answer the next `times` creates of this resource with a 500 (nothing stored)."""
        self.run(lambda: self.emulator.failures.__setitem__(key, times))

    def add_user(self, token: str, username: str, groups: tuple[str, ...] = ()) -> None:
        self.run(lambda: self.emulator.add_user(token, username, groups))

    def allow(
        self,
        subject: str,
        namespace: str,
        verbs: tuple[str, ...],
        resources: tuple[str, ...] = ("trainingjobs",),
        names: tuple[str, ...] = (),
    ) -> None:
        self.run(lambda: self.emulator.allow(subject, namespace, verbs, resources, names=names))

    def release(self) -> None:
        def _release() -> None:
            if self.emulator.hold is not None:
                self.emulator.hold[1].set()
                self.emulator.hold = None

        self.run(_release)


def serve(crd_files: list[str]) -> None:
    """Run the emulator in this process until stdin closes; print its URL first (bench/operator_scale.py)."""
    import sys

    import yaml

    from kubetrain.schema.crd import crd

    emu = RunningEmulator().start()
    emu.register_crd(crd())
    for path in crd_files:
        emu.register_crd(yaml.load(open(path).read(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)))
    print(emu.url, flush=True)
    sys.stdin.read()
    emu.stop()


if __name__ == "__main__":
    import sys

    serve(sys.argv[1:])
