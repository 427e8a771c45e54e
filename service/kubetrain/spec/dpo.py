"""Direct Preference Optimization settings (task dpo): how strongly the policy may leave its reference."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .base import Spec


class DPOSpec(Spec):
    """The DPO loss (Rafailov et al. 2023) on preference pairs; the reference is the starting model, frozen."""

    beta: float = Field(
        0.1,
        gt=0.0,
        le=100.0,
        description="Inverse temperature of the implicit reward beta * log(pi/pi_ref): higher keeps the "
        "policy closer to the reference model.",
    )
    loss_type: Literal["sigmoid", "ipo", "hinge"] = Field(
        "sigmoid",
        description="sigmoid: the DPO paper's loss; ipo: squared distance of the log-ratio margin to "
        "1/(2 beta) (Azar et al. 2023); hinge: max(0, 1 - beta * margin) (SLiC).",
    )
    label_smoothing: float = Field(
        0.0,
        ge=0.0,
        lt=0.5,
        description="Assumed share of flipped preference labels (conservative DPO); sigmoid loss only.",
    )
    sft_weight: float = Field(
        0.0,
        ge=0.0,
        le=100.0,
        description="Weight of the chosen answers' token-mean negative log-likelihood added to the loss (RPO, "
        "TRL's rpo_alpha): keeps the chosen answer likely, whose log-prob plain DPO lets fall along with the "
        "rejected one (greedy generations then lose their end token).",
    )


# What every periodic evaluation of a dpo job reports (besides eval_loss, the DPO loss on held-out pairs).
DPO_METRICS = ("reward_accuracy", "reward_margin", "logps_chosen", "logps_rejected")


def dpo_problem(spec) -> str | None:
    """Why a TrainingJobSpec cannot run as (or with) DPO, or None."""
    dpo = spec.task == "dpo"
    if dpo != (spec.data.format == "preference"):
        return (
            f"task '{spec.task}' does not fit data.format '{spec.data.format}': task dpo goes with "
            "format preference (records prompt, chosen, rejected), and format preference with task dpo"
        )
    if spec.dpo is not None and not dpo:
        return f"dpo settings need task dpo; task is {spec.task} (leave dpo out)"
    if dpo and spec.strategy.type == "pipeline":
        return (
            "task dpo cannot run with strategy pipeline: the pipeline engine computes the language-model "
            "loss inside its stages; use strategy ddp or deepspeed"
        )
    return None
