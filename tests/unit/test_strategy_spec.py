"""Strategy specs: the DeepSpeed config built from the spec, overrides merged or rejected, pipeline layouts checked."""

from __future__ import annotations

import copy
import json

import pytest

from kubetrain.runtime.train.engines.deepspeed import deepspeed_config
from kubetrain.spec import SpecError, set_path, validate_job
from tests.conftest import MINIMAL

TINY_MODEL = {"from_config": {"architecture": "llama", "num_layers": 4}, "tokenizer": {"type": "bpe"}}


def job(strategy: dict, **paths):
    data = copy.deepcopy(MINIMAL)
    data["spec"]["strategy"] = strategy
    for path, value in paths.items():
        set_path(data, path.replace("__", "."), value)
    return validate_job(data)


def test_deepspeed_config_comes_from_the_spec():
    spec = job(
        {"type": "deepspeed", "stage": 3, "offload_optimizer": "cpu", "offload_params": "cpu"},
        spec__training={
            "batch_size": 4,
            "gradient_accumulation_steps": 2,
            "max_grad_norm": 0.5,
            "learning_rate": 3e-4,
            "precision": "bf16",
            "weight_decay": 0.01,
        },
        spec__resources__workers=4,
    ).spec
    cfg = deepspeed_config(spec, gpu=False)
    assert cfg["train_micro_batch_size_per_gpu"] == 4
    assert cfg["gradient_accumulation_steps"] == 2
    assert cfg["train_batch_size"] == 4 * 2 * 4
    assert cfg["gradient_clipping"] == 0.5
    assert cfg["bf16"] == {"enabled": True} and cfg["fp16"] == {"enabled": False}
    zero = cfg["zero_optimization"]
    assert zero["stage"] == 3
    assert zero["offload_optimizer"]["device"] == "cpu" and zero["offload_param"]["device"] == "cpu"
    opt = cfg["optimizer"]
    assert opt["type"] == "AdamW" and opt["params"]["lr"] == 3e-4 and opt["params"]["weight_decay"] == 0.01
    assert opt["params"]["torch_adam"] is True and opt["params"]["fused"] is False
    assert cfg["zero_force_ds_cpu_optimizer"] is False  # torch AdamW on a CPU accelerator
    assert deepspeed_config(spec, gpu=True)["optimizer"]["params"]["fused"] is True
    json.dumps(cfg)  # DeepSpeed takes it as JSON


def test_overrides_merge_into_nested_sections_and_may_restate_derived_values():
    spec = job(
        {
            "type": "deepspeed",
            "stage": 2,
            "config": {
                "zero_optimization": {"overlap_comm": True, "reduce_bucket_size": 5e7, "stage": 2},
                "train_micro_batch_size_per_gpu": 8,  # equal to the spec: fine
                "communication_data_type": "fp32",
            },
        },
        spec__training__batch_size=8,
    ).spec
    cfg = deepspeed_config(spec)
    assert cfg["zero_optimization"] == {"stage": 2, "overlap_comm": True, "reduce_bucket_size": 5e7}
    assert cfg["communication_data_type"] == "fp32"


BAD = [
    # (strategy, extra paths, problem path, fragment)
    ({"type": "deepspeed", "config": {"train_micro_batch_size_per_gpu": 16}}, {}, "spec.strategy.config",
     "strategy.config.train_micro_batch_size_per_gpu: 16 contradicts the spec (8 from training.batch_size)"),
    ({"type": "deepspeed", "config": {"zero_optimization": {"stage": 3}}}, {}, "spec.strategy.config",
     "zero_optimization.stage: 3 contradicts the spec (2 from strategy.stage)"),
    ({"type": "deepspeed", "config": {"gradient_clipping": 2.0}}, {}, "spec.strategy.config", "training.max_grad_norm"),
    ({"type": "deepspeed", "config": {"bf16": {"enabled": True}}}, {}, "spec.strategy.config", "training.precision"),
    ({"type": "deepspeed", "config": {"optimizer": {"type": "Lamb"}}}, {}, "spec.strategy.config", "training.optimizer"),
    ({"type": "deepspeed", "config": {"scheduler": {"type": "WarmupLR"}}}, {}, "spec.strategy.config",
     "training.schedule"),
    ({"type": "deepspeed", "stage": 2, "offload_params": "cpu"}, {}, "spec.strategy.deepspeed", "needs stage 3"),
    ({"type": "deepspeed", "stage": 0, "offload_optimizer": "cpu"}, {}, "spec.strategy.deepspeed", "stage 1, 2 or 3"),
    ({"type": "deepspeed", "stage": 4}, {}, "spec.strategy.stage", "0, 1, 2 or 3"),
    ({"type": "pipeline", "stages": 3}, {}, "spec.strategy.stages", "3 stages do not divide resources.workers (2)"),
    ({"type": "pipeline", "stages": 2, "micro_batches": 3}, {}, "spec.strategy.micro_batches",
     "do not divide training.batch_size (8)"),
    ({"type": "pipeline", "stages": 8}, {"spec.model": TINY_MODEL, "spec.resources.workers": 8},
     "spec.strategy.stages", "8 stages for a model with 4 decoder layers"),
    ({"type": "pipeline", "stages": 2, "micro_batches": 1}, {}, "spec.strategy.micro_batches",
     "1f1b schedule needs at least as many micro-batches as stages (1 < 2)"),
    ({"type": "pipeline", "schedule": "zb"}, {}, "spec.strategy.schedule", "'gpipe' or '1f1b'"),
    ({"type": "pipeline"}, {"spec.task": "sequence_classification", "spec.data.format": "classification"},
     "spec.strategy.type", "pipeline splits causal LMs"),
    ({"type": "pipeline"}, {"spec.training.precision": "fp16", "spec.resources.gpus_per_worker": 1},
     "spec.training.precision", "fp32 and bf16"),
    ({"type": "pipeline", "config": {}}, {}, "spec.strategy.config", "allowed: micro_batches, schedule, stages, type"),
    ({"type": "mesh"}, {}, "spec.strategy", "type 'mesh' is not one of: 'ddp', 'deepspeed', 'pipeline'"),
]  # fmt: skip


@pytest.mark.parametrize("strategy,paths,where,fragment", BAD, ids=[b[3][:40] for b in BAD])
def test_bad_strategies_name_the_field_and_the_reason(strategy, paths, where, fragment):
    data = copy.deepcopy(MINIMAL)
    data["spec"]["strategy"] = strategy
    for path, value in paths.items():
        set_path(data, path, value)
    with pytest.raises(SpecError) as e:
        validate_job(data)
    messages = {p.path: p.message for p in e.value.problems}
    assert where in messages, messages
    assert fragment in messages[where], messages


def test_pipeline_reads_a_local_models_layers_and_architecture(tmp_path):
    from kubetrain.runtime.train.engines import check_model

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "num_hidden_layers": 2}))
    # the spec layer reads no files: the runtime checks a local model once it is resolved
    spec = job(
        {"type": "pipeline", "stages": 4, "micro_batches": 4},
        spec__model__name_or_path=str(tmp_path),
        spec__resources__workers=4,
    ).spec
    with pytest.raises(SpecError) as e:
        check_model(spec, str(tmp_path))
    text = str(e.value)
    assert "cannot split model_type 'bert'" in text and "4 stages for a model with 2 decoder layers" in text
    ok = job(
        {"type": "pipeline", "stages": 2, "micro_batches": 4},
        spec__model=TINY_MODEL,
        spec__resources__workers=4,
    )
    assert ok.spec.strategy.stages == 2
