"""What a training step minimises: the model's own loss unless the task or the spec asks for another.

An objective is `loss(model, batch) -> scalar tensor`, called by the ddp and deepspeed engines on the model
they train (a DDP or DeepSpeed wrapper; forward through it, so hooks and gradient sync still happen).
Objectives that need more than the batch (class weights, a DPO reference pass) are small callables built
by the recipe from the spec; the pipeline engine computes its own loss per stage and refuses other objectives.
"""

from __future__ import annotations

from typing import Protocol

import torch


class Objective(Protocol):
    def __call__(self, model: torch.nn.Module, batch: dict) -> torch.Tensor: ...


def model_loss(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """transformers' own loss: token-mean cross-entropy (causal LM) or the head's loss (classification)."""
    return model(**batch).loss
