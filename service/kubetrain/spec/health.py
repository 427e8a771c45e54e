"""Knobs of the training-health warnings (a NaN or infinite loss or gradient always stops the run)."""

from __future__ import annotations

from pydantic import Field

from .base import Spec


class HealthSpec(Spec):
    """When a logged loss counts as a spike and a validation curve as overfitting (warnings, not failures)."""

    divergence_factor: float = Field(
        10.0,
        gt=1.0,
        description="A logged training loss more than this many robust deviations (1.4826 x MAD) above the "
        "median of the last divergence_window logged losses, and at least twice that median, is a loss spike "
        "(MLflow tag kubetrain.warning.diverging).",
    )
    divergence_window: int = Field(
        20, ge=5, le=10000, description="How many recent logged training losses a spike is judged against."
    )
    overfitting_patience: int = Field(
        3,
        ge=1,
        le=1000,
        description="Validation loss rising for this many evaluations in a row while the training loss falls "
        "is overfitting (MLflow tag kubetrain.warning.overfitting).",
    )
