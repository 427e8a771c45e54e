"""The TrainingJob CustomResourceDefinition, generated from the pydantic models (the single source of truth)."""

from __future__ import annotations

import copy
from typing import Any

from .. import GROUP, KIND, VERSION
from ..spec import TrainingJob
from .status import TrainingJobStatus

PLURAL = "trainingjobs"
SINGULAR = "trainingjob"
SHORT_NAMES = ["tj"]
CATEGORIES = ["kubetrain"]
CRD_NAME = f"{PLURAL}.{GROUP}"

# Spec sections that may change after creation; every other section is immutable (CEL self == oldSelf).
MUTABLE_SECTIONS = frozenset({"lifecycle"})
# Bounds keep the CEL cost estimate of the immutability rules finite (unbounded lists/maps/strings
# make the apiserver reject a rule as too expensive).
MAX_ITEMS, MAX_PROPERTIES, MAX_LENGTH = 256, 128, 4096

PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "description": "Lifecycle phase."},
    {
        "name": "Progress",
        "type": "number",
        "jsonPath": ".status.progress.percent",
        "description": "Percent done.",
    },
    {
        "name": "Workers",
        "type": "integer",
        "jsonPath": ".spec.resources.workers",
        "description": "Ray Train workers.",
    },
    {
        "name": "Metric",
        "type": "string",
        "jsonPath": ".status.metric",
        "description": "Latest headline metric.",
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {
        "name": "Attempt",
        "type": "integer",
        "jsonPath": ".status.attempt",
        "description": "RayJob attempt (retries: lifecycle.backoff_limit).",
        "priority": 1,
    },
    {
        "name": "Resumed-From",
        "type": "integer",
        "jsonPath": ".status.progress.resumed_from_step",
        "description": "Checkpoint step this attempt resumed from.",
        "priority": 1,
    },
]

_DROP = {"title", "discriminator", "const", "prefixItems", "$defs"}


def openapi_schema() -> dict[str, Any]:
    """The structural openAPIV3Schema of the TrainingJob resource."""
    spec_json = TrainingJob.model_json_schema(mode="validation")
    defs = spec_json.get("$defs", {})
    spec = _structural(spec_json["properties"]["spec"], defs)
    immutable = [name for name in spec["properties"] if name not in MUTABLE_SECTIONS]
    for name in immutable:
        spec["properties"][name]["x-kubernetes-validations"] = [
            {"rule": "self == oldSelf", "message": f"spec.{name} is immutable after creation"}
        ]
    # A transition rule only runs when the field exists before and after: adding or removing an optional
    # section is caught here instead.
    optional = [name for name in immutable if name not in spec.get("required", [])]
    spec["x-kubernetes-validations"] = [
        {
            "rule": " && ".join(f"has(self.{n}) == has(oldSelf.{n})" for n in optional),
            "message": f"spec sections other than {', '.join(sorted(MUTABLE_SECTIONS))} cannot be added or "
            "removed after creation",
        }
    ]
    status_json = TrainingJobStatus.model_json_schema(mode="serialization")
    status = _structural(status_json, status_json.get("$defs", {}), defaults=False)
    status["description"] = "Observed state, written by the operator and (progress) by the runtime."
    return {
        "type": "object",
        "description": TrainingJob.__doc__,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "kubetrain.dev/v1alpha1"},
            "kind": {"type": "string", "description": "TrainingJob"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }


def crd() -> dict[str, Any]:
    """The full CustomResourceDefinition object."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": CRD_NAME,
            "labels": {"app.kubernetes.io/name": "kubetrain", "app.kubernetes.io/part-of": "kubetrain"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
                "categories": list(CATEGORIES),
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": copy.deepcopy(PRINTER_COLUMNS),
                    "schema": {"openAPIV3Schema": openapi_schema()},
                }
            ],
        },
    }


def _structural(node: dict[str, Any], defs: dict[str, Any], defaults: bool = True) -> dict[str, Any]:
    """Turn a pydantic JSON Schema node into a structural OpenAPI v3 node (no $ref, nullable, no unions)."""
    node = _deref(node, defs)
    description = node.get("description")
    branches = node.get("anyOf") or node.get("oneOf")
    if branches:
        out = _union([_deref(b, defs) for b in branches], defs, defaults)
        for key in ("default",):
            if (
                key in node
                and defaults
                and node[key] is not None
                and "type" in out
                and not out.get("nullable")
            ):
                out[key] = node[key]
    else:
        out = _plain(node, defs, defaults)
    if description:
        out["description"] = description
    return out


def _deref(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _deref(merged, defs)
    return node


def _union(branches: list[dict[str, Any]], defs: dict[str, Any], defaults: bool) -> dict[str, Any]:
    nullable = any(b.get("type") == "null" for b in branches)
    rest = [b for b in branches if b.get("type") != "null"]
    if len(rest) == 1:
        out = _plain(rest[0], defs, defaults)
    elif all(b.get("type") == "object" and "properties" in b for b in rest):
        # A discriminated union of models: one object holding every member's fields (the pydantic
        # model still enforces which fields go with which type); member defaults would clash.
        props: dict[str, Any] = {}
        tags: dict[str, list[str]] = {}  # discriminator field -> "value: what it means" per member
        for b in rest:
            for name, prop in b["properties"].items():
                converted = _structural(prop, defs, defaults=False)
                if "const" in prop:
                    tags.setdefault(name, []).append(
                        f"{prop['const']}: {prop.get('description', '')}".strip()
                    )
                if name in props and "enum" in props[name] and "enum" in converted:
                    converted["enum"] = sorted(set(props[name]["enum"]) | set(converted["enum"]))
                props.setdefault(name, converted)
                if "enum" in converted:
                    props[name]["enum"] = converted["enum"]
        for name, lines in tags.items():
            props[name]["description"] = " ".join(lines)
        out = {"type": "object", "properties": props}
    elif all(b.get("type") in ("integer", "number") for b in rest):
        out = _plain({**rest[0], "type": "number"}, defs, defaults)
    else:
        # Mixed shapes (e.g. a list of names or the string 'all-linear'): the apiserver keeps the value
        # as given and the pydantic model decides (an invalid one ends as phase Failed, InvalidSpec).
        out = {"x-kubernetes-preserve-unknown-fields": True}
    if nullable:
        out["nullable"] = True
    return out


def _plain(node: dict[str, Any], defs: dict[str, Any], defaults: bool) -> dict[str, Any]:
    kind = node.get("type")
    out: dict[str, Any] = {}
    if "const" in node:
        out["type"] = "string" if isinstance(node["const"], str) else kind
        out["enum"] = [node["const"]]
    elif kind:
        out["type"] = kind
    if "enum" in node:
        out["enum"] = list(node["enum"])
        out.setdefault("type", "string")
    for key in (
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "minLength",
        "maxLength",
        "pattern",
        "minItems",
        "maxItems",
        "format",
    ):
        if key in node:
            out[key] = node[key]
    # JSON Schema 2020 exclusive bounds are numbers; OpenAPI v3.0 (Kubernetes) wants booleans.
    for bound, flag in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if bound in out and not isinstance(out[bound], bool):
            out[flag] = out.pop(bound)
            out[bound] = True
    if kind == "object":
        if "properties" in node:
            out["properties"] = {k: _structural(v, defs, defaults) for k, v in node["properties"].items()}
            required = [r for r in node.get("required", []) if r in out["properties"]]
            if required:
                out["required"] = required
        elif isinstance(node.get("additionalProperties"), dict):
            out["additionalProperties"] = _structural(node["additionalProperties"], defs, defaults)
            out.setdefault("maxProperties", MAX_PROPERTIES)
        else:
            out["x-kubernetes-preserve-unknown-fields"] = True
    elif kind == "array":
        items = node.get("items") or (node.get("prefixItems") or [{}])[0]
        out["items"] = (
            _structural(items, defs, defaults) if items else {"x-kubernetes-preserve-unknown-fields": True}
        )
        out.setdefault("maxItems", MAX_ITEMS)
    elif kind == "string" and "enum" not in out:
        out.setdefault("maxLength", MAX_LENGTH)
    if (
        defaults
        and "default" in node
        and node["default"] is not None
        and not isinstance(node["default"], dict)
    ):
        if not (isinstance(node["default"], list) and not node["default"]):
            out["default"] = node["default"]
    return out
