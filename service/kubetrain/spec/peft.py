"""Parameter-efficient fine-tuning: LoRA adapters, or none for a full fine-tune."""

from __future__ import annotations

from typing import Annotated, Literal, Union

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


class NoPeft(Spec):
    """Full fine-tune: every parameter is trained."""

    type: Literal["none"] = Field("none", description="No adapters: full fine-tuning.")


Peft = Annotated[
    Union[Annotated[LoraSpec, Tag("lora")], Annotated[NoPeft, Tag("none")]], type_discriminator("lora")
]
