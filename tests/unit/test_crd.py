"""The TrainingJob CRD: generated from the models, structural, strict-valid, and committed fresh."""

from __future__ import annotations

import copy
import json

import kubernetes_validate
import pytest
import yaml

from kubetrain.cli.main import main
from kubetrain.schema import crd as crd_mod
from kubetrain.schema import generate
from kubetrain.schema.openapi import crd_validator, errors
from kubetrain.spec import TrainingJob
from tests.conftest import MINIMAL, ROOT

CRD = crd_mod.crd()
VERSION = CRD["spec"]["versions"][0]
SCHEMA = VERSION["schema"]["openAPIV3Schema"]


def walk(node, path=""):
    yield path, node
    for name, child in (node.get("properties") or {}).items():
        yield from walk(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}{{}}")


def test_committed_generated_files_are_fresh():
    stale = generate.stale()
    assert not stale, f"stale generated files {stale}: run `make generate`"


def test_stale_detection_notices_a_change(tmp_path):
    generate.main(tmp_path)
    assert generate.stale(tmp_path) == []
    (tmp_path / "manifests/crd.yaml").write_text("changed\n")
    assert generate.stale(tmp_path) == ["manifests/crd.yaml"]


def test_every_install_manifest_passes_kubernetes_validate_strict():
    for path in sorted((ROOT / "manifests").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            kubernetes_validate.validate(doc, "1.32.0", strict=True)


def test_schema_is_structural():
    for path, node in walk(SCHEMA):
        assert not {"$ref", "anyOf", "oneOf", "allOf", "$defs", "const", "prefixItems", "title"} & set(
            node
        ), path
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), f"{path} has no type"
        if "exclusiveMinimum" in node:
            assert node["exclusiveMinimum"] is True, path


def test_every_spec_field_is_described():
    fields = [(p, n) for p, n in walk(SCHEMA["properties"]["spec"], ".spec") if not p.endswith(("[]", "{}"))]
    undocumented = [p for p, node in fields if not node.get("description")]
    assert undocumented == [], undocumented


@pytest.mark.parametrize(
    "path, expected",
    [
        (".spec.resources.workers", {"type": "integer", "minimum": 1, "maximum": 4096, "default": 2}),
        (
            ".spec.task",
            {
                "type": "string",
                "enum": ["causal_lm", "sequence_classification", "dpo"],
                "default": "causal_lm",
            },
        ),
        (".spec.model.name_or_path", {"type": "string", "nullable": True}),
        (".spec.training.learning_rate", {"type": "number", "minimum": 0.0, "exclusiveMinimum": True}),
        (".spec.lifecycle.suspend", {"type": "boolean", "default": False}),
        (
            ".spec.resources.node_selector",
            {"type": "object", "additionalProperties": {"type": "string", "maxLength": 4096}},
        ),
        (
            ".spec.training.adam_betas",
            {"type": "array", "minItems": 2, "maxItems": 2, "items": {"type": "number"}},
        ),
        (".spec.peft.target_modules", {"x-kubernetes-preserve-unknown-fields": True, "nullable": True}),
        (".spec.peft.type", {"type": "string"}),
    ],
)
def test_schema_fields(path, expected):
    node = dict(walk(SCHEMA))[path]
    assert {k: node.get(k) for k in expected} == expected


def test_names_scope_subresources_and_printer_columns():
    names = CRD["spec"]["names"]
    assert (CRD["metadata"]["name"], CRD["spec"]["group"], VERSION["name"]) == (
        "trainingjobs.kubetrain.dev", "kubetrain.dev", "v1alpha1")  # fmt: skip
    assert (names["kind"], names["shortNames"], names["categories"]) == ("TrainingJob", ["tj"], ["kubetrain"])
    assert VERSION["subresources"] == {"status": {}}
    columns = [(c["name"], c["jsonPath"]) for c in VERSION["additionalPrinterColumns"]]
    assert columns == [("Phase", ".status.phase"), ("Progress", ".status.progress.percent"),
                       ("Workers", ".spec.resources.workers"), ("Metric", ".status.metric"),
                       ("Age", ".metadata.creationTimestamp"), ("Attempt", ".status.attempt"),
                       ("Resumed-From", ".status.progress.resumed_from_step")]  # fmt: skip
    assert [c.get("priority", 0) for c in VERSION["additionalPrinterColumns"]][-2:] == [1, 1]  # -o wide


def test_spec_sections_are_immutable_except_lifecycle():
    spec = SCHEMA["properties"]["spec"]["properties"]
    rules = {
        name: [r["rule"] for r in prop.get("x-kubernetes-validations", [])] for name, prop in spec.items()
    }
    assert rules.pop("lifecycle") == []
    assert set(rules) == set(TrainingJob.model_fields["spec"].annotation.model_fields) - {"lifecycle"}
    assert all(r == ["self == oldSelf"] for r in rules.values()), rules


def test_optional_sections_cannot_be_added_or_removed():
    spec = SCHEMA["properties"]["spec"]
    (rule,) = spec["x-kubernetes-validations"]
    terms = rule["rule"].split(" && ")
    optional = set(spec["properties"]) - {"lifecycle"} - set(spec.get("required", []))
    assert sorted(terms) == sorted(f"has(self.{n}) == has(oldSelf.{n})" for n in optional)
    assert "sweep" in optional and "model" not in optional


def test_status_schema_covers_phase_conditions_and_progress():
    status = SCHEMA["properties"]["status"]["properties"]
    assert status["phase"]["enum"] == ["Pending", "Queued", "Running", "Succeeded", "Failed", "Suspended"]
    condition = status["conditions"]["items"]
    assert set(condition["required"]) == {"type", "status", "reason", "lastTransitionTime"}
    assert set(status["progress"]["properties"]) >= {"step", "total_steps", "percent", "eta_seconds", "metrics",
                                                     "mlflow_run_id", "mlflow_url", "updated"}  # fmt: skip


def _with(path: str, value):
    doc = copy.deepcopy(MINIMAL)
    cur = doc
    keys = path.split(".")
    for key in keys[:-1]:
        cur = cur.setdefault(key, {})
    cur[keys[-1]] = value
    return doc


@pytest.mark.parametrize(
    "doc, problem",
    [
        (MINIMAL, None),
        (_with("spec.resources.workers", 0), "spec.resources.workers: 0 is less than the minimum of 1"),
        (_with("spec.resources.bogus", 1), "spec.resources: Additional properties are not allowed"),
        (_with("spec.task", "ppo"), "spec.task: 'ppo' is not one of"),
        (_with("spec.training.learning_rate", 0), "spec.training.learning_rate: 0 is less than or equal to"),
        (_with("spec.model.name_or_path", None), None),  # nullable
        (_with("spec.peft.target_modules", "all-linear"), None),  # union kept for the model to judge
    ],
)
def test_crd_schema_accepts_and_rejects(doc, problem):
    found = errors(crd_validator(CRD, "v1alpha1"), doc)
    if problem is None:
        assert found == []
    else:
        assert any(f.startswith(problem) for f in found), found


def test_every_example_job_is_accepted_by_the_crd_schema():
    validator = crd_validator(CRD, "v1alpha1")
    for path in sorted((ROOT / "jobs").rglob("*.yaml")):
        assert errors(validator, yaml.safe_load(path.read_text())) == [], path


def test_json_schema_file_is_the_models_schema():
    data = json.loads((ROOT / "manifests/schema/trainingjob.schema.json").read_text())
    data.pop("$id")
    assert data == TrainingJob.model_json_schema()


def test_cli_crd_prints_the_generated_crd(capsys):
    assert main(["crd"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == yaml.safe_load(
        (ROOT / "manifests/crd.yaml").read_text()
    )
