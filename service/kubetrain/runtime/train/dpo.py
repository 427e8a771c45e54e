"""The DPO objective (Rafailov et al. 2023): policy and reference log-probs of chosen and rejected answers.

Why not TRL: its DPO pieces live inside DPOTrainer (a transformers Trainer that owns the loop, the
optimizer, DDP/DeepSpeed wrapping, checkpoints and evaluation), which our engines and recipe already do;
what is left is the loss, a few lines from the papers, written here against our batch layout.

The reference model is the starting point, frozen:
- a LoRA run on a fresh adapter: the same model with the adapter disabled (peft's disable_adapter);
- a LoRA run continuing an adapter (model.init_from): that adapter as loaded, kept as a second, frozen
  adapter named "reference" in the same model (a few MB, not a second model);
- a full fine-tune: a frozen copy taken before the engine wraps the model.
The policy pass goes through the engine's wrapped model (DDP's gradient sync, DeepSpeed's ZeRO hooks); the
reference pass runs under no_grad. Nothing of the reference is checkpointed: resume rebuilds it.
"""

from __future__ import annotations

import contextlib
import copy

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ...spec.dpo import DPOSpec
from .data import IGNORE

REFERENCE_ADAPTER = "reference"


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum over answer tokens of log p(token | prefix), one value per row (prompt and padding excluded)."""
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    mask = labels != IGNORE
    picked = torch.gather(logits.log_softmax(-1), 2, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * mask).sum(-1)


def dpo_loss(
    policy: torch.Tensor, reference: torch.Tensor, spec: DPOSpec
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair losses and margins from log-probs laid out [chosen..., rejected...] (2n values each).

    margin = log-ratio of chosen minus log-ratio of rejected (policy over reference); the implicit rewards
    are beta times the log-ratios.
    """
    n = policy.shape[0] // 2
    ratios = policy - reference
    margin = ratios[:n] - ratios[n:]
    if spec.loss_type == "sigmoid":
        eps = spec.label_smoothing
        losses = -(1 - eps) * F.logsigmoid(spec.beta * margin) - eps * F.logsigmoid(-spec.beta * margin)
    elif spec.loss_type == "ipo":
        losses = (margin - 1 / (2 * spec.beta)) ** 2
    else:  # hinge
        losses = torch.relu(1 - spec.beta * margin)
    return losses, margin


class Reference:
    """Log-probs of the batch under the frozen starting model (see the module docstring for which)."""

    def __init__(self, model: torch.nn.Module):
        """model: the policy as built, before an engine wraps it."""
        lora = hasattr(model, "disable_adapter")
        self.continued = lora and REFERENCE_ADAPTER in getattr(model, "peft_config", {})
        self.copy = None
        if not lora:
            self.copy = copy.deepcopy(model).eval()
            self.copy.requires_grad_(False)

    @torch.no_grad()
    def logps(self, model: torch.nn.Module, batch: dict) -> torch.Tensor:
        """model: the policy as the engine wraps it (unused for a full fine-tune, which has its own copy)."""
        if self.copy is not None:
            return sequence_logps(self.copy(**_inputs(batch)).logits, batch["labels"])
        with self._reference_active(_unwrap(model)):
            return sequence_logps(model(**_inputs(batch)).logits, batch["labels"])

    @contextlib.contextmanager
    def _reference_active(self, peft_model):
        if not self.continued:
            with peft_model.disable_adapter():
                yield
            return
        peft_model.set_adapter(REFERENCE_ADAPTER)
        try:
            yield
        finally:
            peft_model.set_adapter("default")  # makes "default" trainable again and "reference" frozen


class DPOObjective:
    """objective(model, batch) -> mean DPO loss (train/objective.py); also scores batches for evaluation."""

    def __init__(self, spec: DPOSpec, reference: Reference):
        self.spec, self.reference = spec, reference

    def score(self, model, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(per-pair losses, margins, policy log-probs); the policy pass keeps its graph."""
        ref = self.reference.logps(model, batch)
        policy = sequence_logps(model(**_inputs(batch)).logits, batch["labels"])
        losses, margin = dpo_loss(policy, ref, self.spec)
        if self.spec.sft_weight:  # RPO: the chosen answers' token-mean NLL
            n = losses.shape[0]
            tokens = (batch["labels"][:n, 1:] != IGNORE).sum(-1).clamp(min=1)
            losses = losses - self.spec.sft_weight * policy[:n] / tokens
        return losses, margin, policy

    def __call__(self, model, batch: dict) -> torch.Tensor:
        return self.score(model, batch)[0].mean()


@torch.no_grad()
def evaluate_pairs(model, loader, objective: DPOObjective, device, autocast, max_batches=None) -> dict:
    """Held-out DPO metrics over all workers: loss, reward accuracy (share of pairs whose chosen answer has
    the higher implicit reward, ties counted half), mean reward margin (beta x log-ratio margin), mean chosen and rejected log-probs."""
    model.eval()
    sums = torch.zeros(6, dtype=torch.float64)  # loss, correct, margin, logps chosen, logps rejected, pairs
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast():
            losses, margin, policy = objective.score(model, batch)
        n = losses.shape[0]
        wins = (margin > 0).sum() + 0.5 * (margin == 0).sum()  # a tie (policy = reference) is a coin flip
        parts = [losses.sum(), wins, margin.sum(), policy[:n].sum(), policy[n:].sum()]
        sums += torch.tensor([float(p) for p in parts] + [n], dtype=torch.float64)
    model.train()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(sums)
    loss, correct, margin, chosen, rejected, pairs = (sums / max(float(sums[5]), 1.0)).tolist()
    return {
        "eval_loss": loss,
        "eval_reward_accuracy": correct,
        "eval_reward_margin": objective.spec.beta * margin,
        "eval_logps_chosen": chosen,
        "eval_logps_rejected": rejected,
    }


def _inputs(batch: dict) -> dict:
    """Without labels: transformers would compute its own token loss (wasted work, and a second graph)."""
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def _unwrap(model):
    """The peft model inside a DDP or DeepSpeed wrapper."""
    while not hasattr(model, "disable_adapter") and hasattr(model, "module"):
        model = model.module
    return model
