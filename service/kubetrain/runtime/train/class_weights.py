"""Class-weighted cross-entropy for imbalanced classification: the weights, and the objective that uses them."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .data import DataError


def resolve(setting: str | dict[str, float], labels: Sequence, label_names: list[str]) -> list[float]:
    """One weight per class, in label_names order (the model's label ids).

    'balanced' is scikit-learn's n_samples / (n_classes x count) over the training labels; a map names
    labels as the data writes them (ints as text), and a class it leaves out weighs 1.
    """
    if setting == "balanced":
        import numpy as np
        from sklearn.utils.class_weight import compute_class_weight

        y = np.array([str(v) for v in labels])
        absent = sorted(set(label_names) - set(y.tolist()))
        if absent:  # a weight of n / (k x 0) is undefined
            raise DataError(
                f"spec.training.class_weights: balanced needs every class in the training split, which has no "
                f"record of {absent} (raise data.train_fraction or max_train_samples, or give a map)"
            )
        return [float(w) for w in compute_class_weight("balanced", classes=np.array(label_names), y=y)]
    unknown = sorted(set(setting) - set(label_names))
    if unknown:
        raise DataError(
            f"spec.training.class_weights: label(s) {unknown} are not in the training data; its labels are "
            f"{label_names}"
        )
    return [float(setting.get(name, 1.0)) for name in label_names]


def as_params(weights: list[float], label_names: list[str]) -> dict[str, str]:
    """The resolved weights as MLflow params: class_weight.<label> -> weight."""
    return {f"class_weight.{name}": f"{w:.6g}" for name, w in zip(label_names, weights)}


def weighted_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Cross-entropy where each example counts by its class's weight: sum(w_y * nll) / sum(w_y) (torch's
    mean reduction), so equal weights give the plain mean transformers computes."""
    logits = logits.view(-1, logits.shape[-1]).float()  # fp32 loss under autocast, as transformers does
    return F.cross_entropy(logits, labels.view(-1), weight=weights.to(logits.device, torch.float32))


class WeightedCrossEntropy:
    """objective(model, batch) -> weighted cross-entropy of the model's logits (train/objective.py)."""

    def __init__(self, weights: list[float]):
        self.weights = torch.tensor(weights, dtype=torch.float32)

    def __call__(self, model: torch.nn.Module, batch: dict) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k != "labels"}  # no unweighted loss computed alongside
        return weighted_cross_entropy(model(**inputs).logits, batch["labels"], self.weights)
