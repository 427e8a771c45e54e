"""Kubernetes openAPIV3Schema -> JSON Schema, so CRD schemas (ours, KubeRay's) can check objects offline."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # jsonschema is a test/dev dependency; the control plane never validates this way
    import jsonschema


def to_jsonschema(node: dict[str, Any]) -> dict[str, Any]:
    """Convert one structural schema node: int-or-string, nullable, closed objects unless preserve-unknown."""
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            out["properties"] = {k: to_jsonschema(v) for k, v in value.items()}
        elif key == "items":
            out["items"] = to_jsonschema(value)
        elif key == "additionalProperties":
            out["additionalProperties"] = to_jsonschema(value) if isinstance(value, dict) else value
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [to_jsonschema(v) for v in value]
        elif key == "not":
            out["not"] = to_jsonschema(value)
        elif key.startswith("x-kubernetes-") or key in ("nullable", "format", "default", "example"):
            continue
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and isinstance(value, bool):
            continue  # handled below
        else:
            out[key] = value
    for flag, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if node.get(flag) is True and bound in node:
            out[flag] = out.pop(bound)
    if node.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]
    if node.get("type") == "object" and "properties" in node and "additionalProperties" not in node:
        if not node.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    if node.get("nullable"):
        kind = out.get("type")
        if isinstance(kind, str):
            out["type"] = [kind, "null"]
        elif isinstance(kind, list) and "null" not in kind:
            out["type"] = [*kind, "null"]
        if "enum" in out and None not in out["enum"]:
            out["enum"] = [*out["enum"], None]
    return out


def crd_validator(crd: dict[str, Any], version: str) -> jsonschema.Draft202012Validator:
    """A JSON Schema validator for one served version of a CustomResourceDefinition."""
    import jsonschema

    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            schema = to_jsonschema(v["schema"]["openAPIV3Schema"])
            # metadata is validated by the apiserver itself, not by the CRD schema
            schema.setdefault("properties", {})["metadata"] = {"type": "object"}
            return jsonschema.Draft202012Validator(schema)
    raise KeyError(f"{crd['metadata']['name']} serves no version {version}")


def errors(validator: jsonschema.Draft202012Validator, obj: Any) -> list[str]:
    """Every schema violation as 'dotted.path: message', sorted (the apiserver's 422 causes)."""
    out = []
    for e in validator.iter_errors(obj):
        path = ".".join(str(p) for p in e.absolute_path)
        out.append(f"{path or '<root>'}: {e.message}")
    return sorted(out)
