"""Model references resolve offline or fail with a message that says what to do."""

from __future__ import annotations

import pathlib

import pytest

from kubetrain.runtime.train.models import ModelUnavailable, build_model, build_tokenizer, resolve_model_dir
from kubetrain.spec.model import ModelSpec


def test_unknown_hub_id_offline_says_how_to_point_at_a_local_copy(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailable) as e:
        resolve_model_dir(ModelSpec(name_or_path="no-such-org/no-such-model"), tmp_path)
    msg = str(e.value)
    assert msg.startswith("spec.model.name_or_path: cannot download 'no-such-org/no-such-model'")
    assert "set spec.model.name_or_path to that directory" in msg
    assert not any(
        p.name.startswith("no-such-org--no-such-model") and not p.name.endswith(".lock")
        for p in tmp_path.iterdir()
    ), "a failed download must leave nothing half-written"


@pytest.mark.parametrize("ref", ["/definitely/not/here", "./relative/missing", "just-a-name", "a/b/c"])
def test_references_that_are_neither_dirs_nor_hub_ids(tmp_path, ref):
    with pytest.raises(ModelUnavailable, match="neither an existing directory nor a hub id"):
        resolve_model_dir(ModelSpec(name_or_path=ref), tmp_path)


def test_smollm2_resolves_offline_from_the_package_once(smollm2_dir):
    d = pathlib.Path(smollm2_dir)
    assert (d / "model.safetensors").exists() and (d / ".kubetrain-ready").exists()
    # second resolution is a cache hit: same directory, nothing rebuilt
    mtime = (d / "model.safetensors").stat().st_mtime
    assert resolve_model_dir(ModelSpec(name_or_path="HuggingFaceTB/SmolLM2-135M-Instruct"), d.parent) == str(
        d
    )
    assert (d / "model.safetensors").stat().st_mtime == mtime


def test_a_local_directory_loads_as_is_and_generates(smollm2_dir):
    import torch

    spec = ModelSpec(name_or_path=smollm2_dir)
    assert resolve_model_dir(spec, "/nonexistent-cache") == smollm2_dir
    tok = build_tokenizer(spec, smollm2_dir)
    model = build_model(spec, smollm2_dir, tok, "causal_lm")
    assert type(model).__name__ == "LlamaForCausalLM" and tok.chat_template
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "What is 2+2?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=6, do_sample=False)
    assert tok.decode(out[0][ids["input_ids"].shape[1] :], skip_special_tokens=True).strip()
