"""QLoRA trains on CPU here (bitsandbytes 4-bit NF4): loss falls, the base stays 4-bit, the adapter and a
merged full-precision model are published, and an interrupted run resumes with the same losses."""

from __future__ import annotations

import json
import os

import pytest

from kubetrain.runtime import contract as ev
from tests.integration.conftest import job_factory
from tests.integration.test_train_in_process import _losses, _train

pytest.importorskip("bitsandbytes")

QLORA = dict(
    spec__resources__workers=1,
    spec__peft={"type": "qlora", "r": 4, "alpha": 8, "target_modules": "all-linear", "merge_on_save": True},
    spec__model__from_config={"architecture": "llama", "hidden_size": 64, "num_layers": 2, "num_heads": 4},
)


def test_quantized_build_is_4bit_and_merge_matches_the_adapter_model(tmp_path):
    """Unit-level: the built model holds packed 4-bit weights; the merged copy computes what it computes."""
    import torch
    from bitsandbytes.nn import Linear4bit
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    from kubetrain.runtime.train import quantize
    from kubetrain.runtime.train.models import apply_peft

    job = job_factory(tmp_path)("unit", **QLORA)
    q = quantize.quantization_for(job.spec, "cpu")
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4
    )
    model = quantize.build_4bit(
        q, AutoModelForCausalLM, None, cfg, torch.float32, lambda: LlamaForCausalLM(cfg)
    )
    layer = model.model.layers[0].mlp.up_proj
    assert isinstance(layer, Linear4bit) and layer.weight.dtype == torch.uint8
    assert layer.weight.quant_state.quant_type == "nf4" and layer.weight.quant_state.nested  # double quant
    model = apply_peft(model, job.spec.peft, "causal_lm")
    for p in model.parameters():  # a non-zero adapter update, as after training
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.05)
    x = torch.randint(0, 96, (2, 12))
    model.eval()
    with torch.no_grad():
        want = model(input_ids=x).logits
        merged = quantize.merged_full_precision(model)
        got = merged(input_ids=x).logits
        again = model(input_ids=x).logits
    assert type(merged.model.layers[0].mlp.up_proj) is torch.nn.Linear
    assert torch.allclose(got, want, atol=1e-4)  # the exact function trained, not a re-quantized merge
    assert torch.equal(again, want)  # the live model is untouched (training continues after a best publish)


def test_qlora_trains_publishes_and_resumes_on_cpu(tmp_path, monkeypatch):
    from kubetrain.runtime.train import checkpoint

    make = job_factory(tmp_path)
    reference = _train(make("straight", **QLORA), tmp_path)
    losses = _losses(reference)
    assert sorted(losses) == list(range(1, 9))
    evals = [e.metrics["eval_loss"] for e in reference if isinstance(e, ev.Evaluated)]
    assert evals[-1] < evals[0]
    built = next(e for e in reference if isinstance(e, ev.ModelBuilt))
    assert built.trainable < built.total
    memory = next(e for e in reference if isinstance(e, ev.Memory)).ranks[0]
    assert (
        0 < memory["param_bytes"] < built.total * 4
    )  # fp32 would be exactly 4 bytes each: the base is packed
    final = tmp_path / "straight" / "final"
    with open(final / "adapter_config.json") as f:
        assert json.load(f)["peft_type"] == "LORA"
    with open(final / "merged" / "config.json") as f:
        assert "quantization_config" not in json.load(f)  # a plain full-precision model
    # the checkpoint holds only the adapter (a few KB), not the 4-bit base
    ckpt8 = checkpoint.checkpoint_dir(str(tmp_path / "runs" / "straight"), 8)
    assert os.path.getsize(os.path.join(ckpt8, checkpoint.WEIGHTS)) < 200_000

    job = make("interrupted", **QLORA)
    monkeypatch.setenv("KUBETRAIN_FAULT_AT_STEP", "5")
    monkeypatch.setenv("KUBETRAIN_FAULT_MARKER", str(tmp_path / "fault-once"))
    with pytest.raises(RuntimeError, match="injected fault"):
        _train(job, tmp_path)
    resumed = _train(job, tmp_path)
    assert [e.step for e in resumed if isinstance(e, ev.Resumed)] == [4]
    after = _losses(resumed)
    assert sorted(after) == [5, 6, 7, 8]
    for step, loss in after.items():
        assert loss == pytest.approx(losses[step], rel=1e-4, abs=1e-5)
