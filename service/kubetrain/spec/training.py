"""How to optimise: optimizer, schedule, batch sizes, precision, evaluation and early stopping."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from .base import Spec
from .health import HealthSpec


class EarlyStopping(Spec):
    """Stop when a validation metric has not improved for `patience` evaluations."""

    metric: str = Field(
        "eval_loss", description="Validation metric to watch, e.g. eval_loss, eval_accuracy, eval_f1."
    )
    mode: Literal["min", "max"] = Field("min", description="Whether lower (min) or higher (max) is better.")
    patience: int = Field(3, ge=1, description="Evaluations without improvement before stopping.")
    min_delta: float = Field(0.0, ge=0.0, description="Smallest change that counts as an improvement.")


class TrainingSpec(Spec):
    """Optimisation settings; batch_size is per worker, so the global batch is batch_size x workers x accumulation."""

    optimizer: Literal["adamw", "sgd"] = Field("adamw", description="torch optimizer.")
    learning_rate: float = Field(2e-4, gt=0.0, le=1.0, description="Peak learning rate.")
    weight_decay: float = Field(
        0.0, ge=0.0, le=1.0, description="Decoupled weight decay (AdamW) or L2 (SGD)."
    )
    adam_betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW beta1 and beta2.")
    schedule: Literal["constant", "linear", "cosine"] = Field(
        "cosine", description="Learning-rate decay after warmup."
    )
    warmup_steps: int | None = Field(None, ge=0, description="Linear warmup length in optimizer steps.")
    warmup_ratio: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Warmup as a fraction of total steps (used when warmup_steps is unset).",
    )
    epochs: float | None = Field(
        None, gt=0.0, description="Passes over the training data (set this or max_steps)."
    )
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps to run (set this or epochs).")
    batch_size: int = Field(8, ge=1, le=65536, description="Examples per worker per micro-step.")
    gradient_accumulation_steps: int = Field(1, ge=1, le=4096, description="Micro-steps per optimizer step.")
    max_grad_norm: float | None = Field(
        1.0, gt=0.0, description="Clip the global gradient norm; null disables."
    )
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="fp32, or mixed precision with bf16 (CPU or Ampere+ GPU) or fp16 (GPU only)."
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in backward to save memory."
    )
    seed: int = Field(
        42, ge=0, description="Seeds Python, NumPy and torch on every worker and the data order."
    )
    eval_every: int | None = Field(
        None,
        ge=1,
        description="Evaluate every N optimizer steps; null evaluates once per epoch and at the end.",
    )
    eval_batches: int | None = Field(
        None, ge=1, description="Evaluate on at most this many validation batches."
    )
    log_every: int = Field(1, ge=1, description="Log training metrics every N optimizer steps.")
    early_stopping: EarlyStopping | None = Field(
        None, description="Stop early on a stalled validation metric."
    )
    class_weights: Literal["balanced"] | dict[str, float] | None = Field(
        None,
        description="sequence_classification: weight each class in the cross-entropy loss. balanced: "
        "n_samples / (n_classes x count of the class) over the training split (scikit-learn's "
        "compute_class_weight); or a map of label -> weight (labels as in the data, missing ones weigh 1).",
    )
    health: HealthSpec = Field(
        default_factory=HealthSpec,
        description="Training-health warnings: loss spikes and overfitting (a NaN or infinite loss or "
        "gradient always stops the run).",
    )

    @field_validator("class_weights", mode="before")
    @classmethod
    def _label_keys(cls, value):
        """Integer labels are written as YAML integer keys ({0: 1.0, 1: 4.0}); labels are matched as text."""
        return {str(k): w for k, w in value.items()} if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _length(self) -> TrainingSpec:
        if self.epochs is not None and self.max_steps is not None:
            raise ValueError("set either epochs or max_steps, not both")
        if self.epochs is None and self.max_steps is None:
            self.epochs = 1.0
        if (
            self.warmup_steps is not None
            and self.max_steps is not None
            and self.warmup_steps > self.max_steps
        ):
            raise ValueError(f"warmup_steps ({self.warmup_steps}) exceeds max_steps ({self.max_steps})")
        if isinstance(self.class_weights, dict):
            bad = {k: w for k, w in self.class_weights.items() if not (0.0 < w < float("inf"))}
            if not self.class_weights or bad:
                raise ValueError(
                    f"class_weights: give 'balanced' or a non-empty map of label -> positive finite weight; "
                    f"got {self.class_weights}"
                )
        return self
