"""How the work is spread over workers: a discriminated union on `type` (ddp now; deepspeed, pipeline next)."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, Tag

from .base import Spec, type_discriminator


class DDPStrategy(Spec):
    """PyTorch DistributedDataParallel: every worker holds the whole model, gradients are all-reduced."""

    type: Literal["ddp"] = Field("ddp", description="Distributed data parallel.")
    backend: Literal["auto", "gloo", "nccl"] = Field(
        "auto", description="Collective backend: auto picks nccl on GPUs and gloo on CPUs."
    )
    find_unused_parameters: bool = Field(False, description="Let DDP tolerate parameters without gradients.")


Strategy = Annotated[Union[Annotated[DDPStrategy, Tag("ddp")]], type_discriminator("ddp")]
