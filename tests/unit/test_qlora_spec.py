"""peft.type qlora in the spec: its defaults, the strategies it refuses, and its compute dtype."""

from __future__ import annotations

import copy

import pytest

from kubetrain.spec import validate_job
from kubetrain.spec.load import SpecError
from kubetrain.spec.peft import LoraSpec, QLoraSpec, compute_dtype

JOB = {
    "apiVersion": "kubetrain.dev/v1alpha1",
    "kind": "TrainingJob",
    "metadata": {"name": "q"},
    "spec": {
        "model": {"name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct"},
        "data": {"train": "train.jsonl", "format": "instruction"},
        "peft": {"type": "qlora"},
    },
}


def _job(**spec):
    data = copy.deepcopy(JOB)
    data["spec"].update(spec)
    return validate_job(data)


def test_qlora_defaults_are_nf4_double_quant_and_checkpointing():
    peft = _job().spec.peft
    assert isinstance(peft, QLoraSpec) and isinstance(peft, LoraSpec)  # LoRA fields and behaviour on top
    assert (peft.quant_type, peft.double_quant, peft.compute_dtype) == ("nf4", True, "auto")
    assert peft.gradient_checkpointing and not peft.merge_on_save
    assert (peft.r, peft.alpha) == (8, 16.0)


@pytest.mark.parametrize(
    "given,precision,want",
    [
        ("auto", "fp32", "float32"),
        ("auto", "bf16", "bfloat16"),
        ("auto", "fp16", "float16"),
        ("float16", "bf16", "float16"),
    ],
)
def test_compute_dtype_follows_precision_unless_set(given, precision, want):
    assert compute_dtype(QLoraSpec(compute_dtype=given), precision) == want


def test_fp4_is_allowed_and_other_quant_types_are_refused_naming_the_field():
    assert _job(peft={"type": "qlora", "quant_type": "fp4"}).spec.peft.quant_type == "fp4"
    with pytest.raises(SpecError) as e:
        _job(peft={"type": "qlora", "quant_type": "int4"})
    assert "spec.peft.quant_type" in str(e.value) and "'nf4' or 'fp4'" in str(e.value)


@pytest.mark.parametrize(
    "strategy",
    [{"type": "deepspeed", "stage": 2}, {"type": "deepspeed", "stage": 3}, {"type": "pipeline", "stages": 2}],
)
def test_qlora_refuses_deepspeed_and_pipeline_naming_strategy_type(strategy):
    with pytest.raises(SpecError) as e:
        _job(strategy=strategy, resources={"workers": 2})
    text = str(e.value)
    assert "strategy.type" in text and "qlora trains with strategy ddp only" in text


def test_qlora_with_ddp_on_cpu_workers_validates():
    job = _job(resources={"workers": 2, "gpus_per_worker": 0})
    assert job.spec.strategy.type == "ddp" and job.spec.peft.type == "qlora"


def test_plain_lora_keeps_deepspeed():
    job = _job(peft={"type": "lora"}, strategy={"type": "deepspeed", "stage": 2}, resources={"workers": 2})
    assert job.spec.peft.type == "lora"
