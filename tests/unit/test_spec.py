"""The spec accepts what it should and names the field path, the given value and what is allowed otherwise."""

from __future__ import annotations

import copy

import pytest
import yaml

from kubetrain.spec import SpecError, TrainingJob, apply_overrides, load_job, validate_job
from tests.conftest import MINIMAL, ROOT


def with_(path: str, value) -> dict:
    return (
        apply_overrides(
            copy.deepcopy(MINIMAL), [f"{path}={yaml.safe_dump(value, default_flow_style=True).strip()}"]
        )
        if not isinstance(value, dict)
        else _set(path, value)
    )


def _set(path: str, value) -> dict:
    from kubetrain.spec import set_path

    data = copy.deepcopy(MINIMAL)
    set_path(data, path, value)
    return data


def test_defaults_are_sensible():
    job = validate_job(copy.deepcopy(MINIMAL))
    s = job.spec
    assert s.task == "causal_lm" and s.strategy.type == "ddp" and s.peft.type == "lora"
    assert s.training.epochs == 1.0 and s.training.max_steps is None
    assert s.resources.workers == 2 and s.checkpoint.keep_last == 2


GOOD = [
    ("spec.training.max_steps", 10),
    ("spec.training.precision", "bf16"),
    ("spec.peft", {"type": "none"}),
    ("spec.peft", {"type": "lora", "r": 4, "target_modules": "all-linear"}),
    ("spec.model", {"from_config": {"hidden_size": 32, "num_heads": 4}, "tokenizer": {"type": "bpe"}}),
    ("spec.model", {"name_or_path": "/models/x", "gguf_file": "x.Q4.gguf"}),
    ("spec.data", {"train": "d.csv", "format": "classification"}),
    ("spec.training.early_stopping", {"metric": "eval_loss", "patience": 2}),
    ("spec.env", [{"name": "HF_TOKEN", "secret_key_ref": {"name": "hf", "key": "token"}}]),
    ("spec.resources.memory_per_worker", "8Gi"),
]


@pytest.mark.parametrize("path,value", GOOD, ids=[g[0] for g in GOOD])
def test_good(path, value):
    data = _set(path, value)
    if path == "spec.data":
        data["spec"]["task"] = "sequence_classification"
    validate_job(data)


BAD = [
    # (path to set, value, expected problem path, a fragment of the message)
    ("spec.training.learning_rate", -1, "spec.training.learning_rate", "got -1"),
    ("spec.training.learning_rate", "fast", "spec.training.learning_rate", "got 'fast'"),
    ("spec.training.schedule", "cosin", "spec.training.schedule", "'constant', 'linear' or 'cosine'"),
    ("spec.training.learning_rat", 0.1, "spec.training.learning_rat", "did you mean 'learning_rate'"),
    ("spec.training.batch_size", 0, "spec.training.batch_size", "greater than or equal to 1"),
    ("spec.training.max_steps", 5, "spec.training", "either epochs or max_steps"),
    ("spec.peft.r", 0, "spec.peft.r", "greater than or equal to 1"),
    ("spec.peft.type", "qlora9", "spec.peft", "'lora', 'none'"),
    ("spec.strategy", {"backend": "mpi"}, "spec.strategy.backend", "got 'mpi'"),
    ("spec.strategy.type", "horovod", "spec.strategy", "'ddp'"),
    ("spec.data.format", "xml", "spec.data.format", "'text', 'instruction', 'chat' or 'classification'"),
    ("spec.data.validation_split", 1.5, "spec.data.validation_split", "less than 1"),
    ("spec.data.packing", True, "spec.data", "packing applies to format 'text' only"),
    ("spec.task", "sequence_classification", "spec", "does not fit data.format"),
    ("spec.training.precision", "fp16", "spec", "fp16 needs GPUs"),
    ("spec.model.from_config", {"hidden_size": 30, "num_heads": 4}, "spec.model.from_config", "must divide"),
    ("spec.resources.memory_per_worker", "lots", "spec.resources.memory_per_worker", "Kubernetes quantity"),
    ("metadata.name", "My_Job", "metadata.name", "RFC 1123"),
    ("kind", "RayJob", "kind", "'TrainingJob'"),
    ("apiVersion", "v1", "apiVersion", "'kubetrain.dev/v1alpha1'"),
    ("spec.env", [{"name": "HF_TOKEN", "value": "hf_abc"}], "spec.env.0", "secret_key_ref"),
    ("spec.training.early_stopping", {"metric": "eval_f1"}, "spec", "not a validation metric of causal_lm"),
    ("spec.evaluation.generation", {"examples": 4}, None, None),  # fine for instruction data (the default)
]


@pytest.mark.parametrize("path,value,where,fragment", BAD, ids=[f"{b[0]}={b[1]}" for b in BAD])
def test_bad(path, value, where, fragment):
    data = _set(path, value)
    if path == "spec.training.max_steps":
        data["spec"]["training"]["epochs"] = 2
    if where is None:
        validate_job(data)
        return
    with pytest.raises(SpecError) as e:
        validate_job(data)
    paths = [p.path for p in e.value.problems]
    assert where in paths, paths
    assert any(fragment in p.message for p in e.value.problems if p.path == where), e.value


def test_missing_required_fields_are_named():
    with pytest.raises(SpecError) as e:
        validate_job(
            {
                "apiVersion": "kubetrain.dev/v1alpha1",
                "kind": "TrainingJob",
                "metadata": {"name": "x"},
                "spec": {"model": {"name_or_path": "a/b"}},
            }
        )
    assert [(p.path, p.message) for p in e.value.problems] == [("spec.data", "required field is missing")]


def test_errors_carry_yaml_line_numbers():
    text = (ROOT / "jobs/quickstart.yaml").read_text().replace("learning_rate: 2.0e-3", "learning_rate: -3")
    line = next(i for i, ln in enumerate(text.splitlines(), 1) if "learning_rate: -3" in ln)
    with pytest.raises(SpecError) as e:
        load_job(text, "q.yaml")
    (problem,) = e.value.problems
    assert (problem.path, problem.line) == ("spec.training.learning_rate", line)
    assert str(e.value).startswith(f"q.yaml:{line}: spec.training.learning_rate: got -3")


@pytest.mark.parametrize(
    "text,fragment",
    [
        ("", "the document is empty"),
        ("- a\n- b\n", "got a list"),
        ("just a string", "got a string"),
        ("a: [1, 2\n", "YAML syntax error"),
        ("a: 1\n  b: 2\n", "YAML syntax error"),
    ],
)
def test_malformed_documents(text, fragment):
    with pytest.raises(SpecError) as e:
        load_job(text, "f.yaml")
    assert fragment in str(e.value)


def test_overrides_apply_and_validate():
    job = validate_job(
        copy.deepcopy(MINIMAL), overrides=["spec.training.learning_rate=1e-4", "spec.resources.workers=4"]
    )
    assert job.spec.training.learning_rate == 1e-4 and job.spec.resources.workers == 4
    with pytest.raises(SpecError) as e:
        validate_job(copy.deepcopy(MINIMAL), overrides=["spec.training.learning_rate=-2"])
    assert e.value.problems[0].path == "spec.training.learning_rate"
    with pytest.raises(SpecError, match="path=value"):
        validate_job(copy.deepcopy(MINIMAL), overrides=["spec.training.learning_rate"])


def test_server_metadata_is_accepted():
    """`kubectl get tj x -o yaml` output runs locally: server-set metadata and status are accepted."""
    data = copy.deepcopy(MINIMAL)
    data["metadata"].update(
        uid="123", resourceVersion="5", generation=2, creationTimestamp="2026-01-01T00:00:00Z"
    )
    data["status"] = {"phase": "Running"}
    assert validate_job(data).metadata.uid == "123"


def test_every_field_has_a_description():
    missing = []

    def walk(model, prefix):
        for name, field in model.model_fields.items():
            if not field.description:
                missing.append(f"{prefix}{name}")
            ann = field.annotation
            for sub in _models(ann):
                if sub is not model:
                    walk(sub, f"{prefix}{name}.")

    walk(TrainingJob, "")
    assert missing == []


def _models(tp):
    import typing

    from pydantic import BaseModel

    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [tp]
    return [m for arg in typing.get_args(tp) for m in _models(arg)]


@pytest.mark.parametrize("path", sorted(p.relative_to(ROOT) for p in ROOT.glob("jobs/**/*.yaml")), ids=str)
def test_example_jobs_are_valid(path):
    load_job((ROOT / path).read_text(), str(path))
