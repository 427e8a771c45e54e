"""The optimizer and the learning-rate schedule, built from the spec; rebuilt at a step when a run resumes."""

from __future__ import annotations

import torch


def build_optimizer(training, parameters, device):
    """AdamW (fused on GPU) or SGD with momentum over the trainable parameters."""
    params = [p for p in parameters if p.requires_grad]
    if training.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=training.learning_rate, momentum=0.9, weight_decay=training.weight_decay
        )
    return torch.optim.AdamW(
        params,
        lr=training.learning_rate,
        betas=tuple(training.adam_betas),
        weight_decay=training.weight_decay,
        fused=device.type == "cuda" or None,
    )


def build_scheduler(training, optimizer, total_steps: int, step: int = 0):
    """transformers' schedule, positioned after `step` optimizer steps (torchtune's last_epoch = step - 1).

    Resuming at a step needs each param group's `initial_lr` (the base the schedule scales): a fresh
    optimizer gets it here; a loaded one has it from its checkpoint, or from set_hyperparameters.
    """
    import transformers as tf

    warmup = (
        training.warmup_steps
        if training.warmup_steps is not None
        else int(training.warmup_ratio * total_steps)
    )
    warmup = min(warmup, total_steps)
    if step:
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
    # The functions, not get_scheduler: it drops last_epoch for the constant schedule.
    if training.schedule == "constant":
        return tf.get_constant_schedule_with_warmup(optimizer, warmup, last_epoch=step - 1)
    make = {"linear": tf.get_linear_schedule_with_warmup, "cosine": tf.get_cosine_schedule_with_warmup}
    return make[training.schedule](optimizer, warmup, total_steps, last_epoch=step - 1)


def set_hyperparameters(optimizer, training) -> None:
    """The spec's base learning rate and weight decay, over what a loaded optimizer state holds.

    A no-op for a plain resume (same spec); for a sweep trial that takes over another trial's checkpoint
    with a mutated config (population-based training) it is what makes the mutation take effect, once the
    schedule is rebuilt on it (build_scheduler at the resumed step).
    """
    for group in optimizer.param_groups:
        group["initial_lr"] = training.learning_rate
        if "weight_decay" in group:
            group["weight_decay"] = training.weight_decay
