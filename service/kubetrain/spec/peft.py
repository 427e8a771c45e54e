"""Parameter-efficient fine-tuning: LoRA adapters, QLoRA (LoRA over a 4-bit base), or none for a full fine-tune."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Field, Tag

from .base import Spec, type_discriminator


class LoraSpec(Spec):
    """Low-rank adapters on the chosen modules; only adapter weights are trained."""

    type: Literal["lora"] = Field("lora", description="LoRA adapters (PEFT).")
    r: int = Field(8, ge=1, le=1024, description="Adapter rank.")
    alpha: float = Field(16.0, gt=0.0, description="Scaling numerator: updates are scaled by alpha / r.")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the adapter input.")
    target_modules: list[str] | Literal["all-linear"] | None = Field(
        None,
        description="Module names to adapt (e.g. [q_proj, v_proj]), 'all-linear', or null for PEFT's "
        "default for the architecture.",
    )
    merge_on_save: bool = Field(False, description="Also save the base model with the adapter merged in.")


class QLoraSpec(LoraSpec):
    """LoRA adapters over base weights quantized to 4 bits (bitsandbytes): the frozen base takes about a
    quarter of its bf16 memory; the adapters train in compute_dtype. Runs on CPU too, but slowly (meant
    for GPUs; CPU for small models and tests)."""

    type: Literal["qlora"] = Field(
        "qlora", description="QLoRA: LoRA adapters over a 4-bit base (bitsandbytes)."
    )
    quant_type: Literal["nf4", "fp4"] = Field(
        "nf4", description="4-bit data type of the base weights: nf4 (NormalFloat, the QLoRA paper's) or fp4."
    )
    double_quant: bool = Field(
        True, description="Quantize the quantization constants too (saves about 0.4 bits per parameter)."
    )
    compute_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="Data type the 4-bit weights are dequantized to for each matmul; auto follows "
        "training.precision (bf16 -> bfloat16, fp16 -> float16, fp32 -> float32).",
    )
    gradient_checkpointing: bool = Field(
        True,
        description="Recompute activations in the backward pass (on by default for QLoRA: activations, not "
        "the 4-bit weights, then dominate memory); training.gradient_checkpointing also turns it on.",
    )
    merge_on_save: bool = Field(
        False,
        description="Also save a full-precision model: the 4-bit base dequantized with the adapter merged in "
        "(in model.dtype).",
    )


class NoPeft(Spec):
    """Full fine-tune: every parameter is trained."""

    type: Literal["none"] = Field("none", description="No adapters: full fine-tuning.")


Peft = Annotated[
    Union[
        Annotated[LoraSpec, Tag("lora")],
        Annotated[NoPeft, Tag("none")],
        Annotated[QLoraSpec, Tag("qlora")],
    ],
    type_discriminator("lora"),
]


def compute_dtype(peft: QLoraSpec, precision: str) -> str:
    """The torch dtype name the 4-bit weights are dequantized to for a matmul."""
    if peft.compute_dtype != "auto":
        return peft.compute_dtype
    return {"bf16": "bfloat16", "fp16": "float16"}.get(precision, "float32")


def peft_problems(spec) -> list[tuple[tuple, str, Any]]:
    """(location, reason, input) for each way a QLoRA spec does not fit the strategy."""
    p, s = spec.peft, spec.strategy
    if p.type != "qlora":
        return []
    if s.type == "deepspeed":
        return [
            (
                ("strategy", "type"),
                "peft.type qlora trains with strategy ddp only: DeepSpeed casts and partitions parameters, "
                "which breaks bitsandbytes' packed 4-bit weights (use ddp, or peft.type lora with deepspeed)",
                s.type,
            )
        ]
    if s.type == "pipeline":
        return [
            (
                ("strategy", "type"),
                "peft.type qlora trains with strategy ddp only: the pipeline engine rebuilds and splits "
                "the model in full precision (use ddp, or peft.type lora with pipeline)",
                s.type,
            )
        ]
    return []
