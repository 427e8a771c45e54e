"""How a binary classifier's decision threshold is set: a fixed number, or chosen on validation for a metric."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, ValidatorFunctionWrapHandler, WrapValidator

from .base import Spec

THRESHOLD_METRICS = ("f1", "accuracy", "balanced_accuracy")


class ChooseThreshold(Spec):
    """Pick the threshold on the positive class's probability that maximises a metric on the validation set."""

    choose: Literal["f1", "accuracy", "balanced_accuracy"] = Field(
        ...,
        description="The validation metric the chosen threshold maximises: f1, accuracy or balanced_accuracy. "
        "The value is tuned on the same validation set it is reported on, so the metrics at it are optimistic.",
    )


def _one_error(value: Any, handler: ValidatorFunctionWrapHandler) -> float | ChooseThreshold:
    """One clear error instead of one per member of the union."""
    try:
        return handler(value)
    except ValidationError:
        raise ValueError(
            f"must be a number between 0 and 1 (exclusive), or {{choose: {' | '.join(THRESHOLD_METRICS)}}}"
        ) from None


Threshold = Annotated[Annotated[float, Field(gt=0.0, lt=1.0)] | ChooseThreshold, WrapValidator(_one_error)]

THRESHOLD_DESCRIPTION = (
    "Decision threshold for two-class sequence_classification, on the probability of the second label "
    "(labels sorted): a number in (0, 1), or {choose: f1 | accuracy | balanced_accuracy} to pick it on "
    "the validation set. Reported at the end (eval_threshold and the metrics at it) beside the default argmax "
    "(0.5) metrics, which stay the ones early stopping and sweeps see."
)
