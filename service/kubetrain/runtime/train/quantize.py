"""QLoRA's 4-bit base: loading a model quantized by bitsandbytes, preparing it for k-bit training, and
dequantizing it again to save a merged full-precision model."""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from dataclasses import dataclass

import torch

from ...spec.peft import QLoraSpec, compute_dtype

# Output heads stay in full precision: classification heads are trained whole (PEFT's modules_to_save) and a
# packed 4-bit weight cannot take gradients; the LM head is left out as transformers does by default.
HEADS = ["score", "classifier", "lm_head"]


@dataclass(frozen=True)
class Quantization:
    """How build_model loads and prepares a 4-bit base (from the job spec and the worker's device)."""

    peft: QLoraSpec
    precision: str
    gradient_checkpointing: bool
    device: torch.device


def quantization_for(spec, device) -> Quantization | None:
    """The 4-bit loading a job needs (peft.type qlora), or None."""
    if not isinstance(spec.peft, QLoraSpec):
        return None
    t = spec.training
    return Quantization(spec.peft, t.precision, t.gradient_checkpointing, torch.device(device))


def build_4bit(q: Quantization, auto, model_dir: str | None, config, dtype, fresh=None):
    """The base model quantized to 4 bits on q.device, prepared for training adapters on top."""
    model = load_4bit(auto, model_dir, config, dtype, bnb_config(q.peft, q.precision), q.device, fresh)
    return prepare(model, q.peft, q.gradient_checkpointing)


def bnb_config(peft_spec: QLoraSpec, precision: str):
    """transformers' BitsAndBytesConfig for the spec: 4-bit weights, its data type, double quantization."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=peft_spec.quant_type,
        bnb_4bit_use_double_quant=peft_spec.double_quant,
        bnb_4bit_compute_dtype=getattr(torch, compute_dtype(peft_spec, precision)),
        llm_int8_skip_modules=HEADS,
    )


def load_4bit(auto, model_dir: str | None, config, dtype, quantization, device, fresh=None):
    """The model from model_dir with its linear layers quantized while loading, placed on `device`.

    A from_config model (model_dir None) is built by fresh() in full precision and saved to a temporary
    directory first: transformers quantizes only while loading weights, and this keeps its rules (which
    modules stay unquantized, the quantization config on the model) for both kinds of model.
    """
    tmp = None
    if model_dir is None:
        tmp = model_dir = tempfile.mkdtemp(prefix="kubetrain-qlora-")
        _save_plain(fresh(), tmp)
    try:
        model = auto.from_pretrained(
            model_dir,
            config=config,
            dtype=dtype,
            quantization_config=quantization,
            device_map={"": device},
        )
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    keep_standard_layout(model)
    return model


def _save_plain(model, directory: str) -> None:
    """Config and weights as from_pretrained reads them, written on every rank (transformers' save_pretrained
    writes on rank 0 only once torch.distributed is up, and every rank builds its own copy)."""
    from safetensors.torch import save_model

    model.config.save_pretrained(directory)
    save_model(model, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})


def keep_standard_layout(model) -> None:
    """Stop bitsandbytes repacking 4-bit weights for its AVX512-BF16 CPU kernel on the first no-grad
    forward (an evaluation): that layout rounds the scales to bf16, its matmul has no backward for
    the layers below, and dequantize() misreads it. Checked on CPU only; GPUs never repack."""
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def prepare(model, peft_spec: QLoraSpec, gradient_checkpointing: bool):
    """PEFT's preparation for k-bit training (frozen base, fp32 norms, input gradients for checkpointing)."""
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(
        model,
        use_gradient_checkpointing=peft_spec.gradient_checkpointing or gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
    )


def merged_full_precision(peft_model, dtype=None):
    """A plain transformers model: the 4-bit base dequantized, with the adapter's update added in.

    PEFT's own merge_and_unload re-quantizes the merged weight (losing most of the update) and changes the
    model in place; this adds the update to the dequantized weight the adapter was trained against, on a
    copy, so the live model keeps training.
    """
    from peft.tuners.lora import LoraLayer

    deltas = {}
    for name, module in peft_model.named_modules():
        if isinstance(module, LoraLayer):
            key = name.removeprefix("base_model.model.")
            for adapter in module.active_adapters:
                delta = module.get_delta_weight(adapter).detach()
                deltas[key] = deltas[key] + delta if key in deltas else delta
    plain = copy.deepcopy(peft_model).unload()
    plain.dequantize()
    with torch.no_grad():
        for key, delta in deltas.items():
            weight = plain.get_submodule(key).weight
            weight.add_(delta.to(weight.dtype))
    if dtype is not None:
        plain.to(dtype)
    return plain
