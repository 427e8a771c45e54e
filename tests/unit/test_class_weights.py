"""training.class_weights: resolved weights (balanced, a map), the weighted loss, and the spec's checks."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from kubetrain.runtime.train.class_weights import (
    WeightedCrossEntropy,
    as_params,
    resolve,
    weighted_cross_entropy,
)
from kubetrain.runtime.train.data import DataError
from kubetrain.spec import TrainingJob


def test_balanced_is_inverse_frequency_over_the_training_labels():
    labels = [0] * 6 + [1] * 2  # ints in the data, text in label_names
    weights = resolve("balanced", labels, ["0", "1"])
    assert weights == pytest.approx([8 / (2 * 6), 8 / (2 * 2)])
    assert as_params(weights, ["0", "1"]) == {"class_weight.0": "0.666667", "class_weight.1": "2"}


def test_a_map_names_labels_and_the_rest_weigh_one():
    assert resolve({"spam": 3.0}, ["ham", "spam", "eggs"], ["eggs", "ham", "spam"]) == [1.0, 1.0, 3.0]
    with pytest.raises(DataError, match=r"class_weights: label\(s\) \['spma'\].*\['ham', 'spam'\]"):
        resolve({"spma": 3.0}, ["ham", "spam"], ["ham", "spam"])
    with pytest.raises(DataError, match=r"balanced needs every class.*\['spam'\]"):
        resolve("balanced", ["ham", "ham"], ["ham", "spam"])


def test_weights_scale_each_example_by_its_class():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    nll = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    # equal weights: the plain mean transformers computes
    assert weighted_cross_entropy(logits, labels, torch.tensor([1.0, 1.0])) == pytest.approx(
        float(nll.mean())
    )
    # class 1 weighs 3: sum(w_y * nll) / sum(w_y)
    want = (nll[0] + 3 * nll[1] + 3 * nll[2]) / 7
    assert weighted_cross_entropy(logits, labels, torch.tensor([1.0, 3.0])) == pytest.approx(float(want))
    # a class weighted up pulls the gradient toward it: the minority logit rises faster
    x = logits.clone().requires_grad_(True)
    weighted_cross_entropy(x, labels, torch.tensor([1.0, 3.0])).backward()
    plain = logits.clone().requires_grad_(True)
    weighted_cross_entropy(plain, labels, torch.tensor([1.0, 1.0])).backward()
    assert -x.grad[1, 1] > -plain.grad[1, 1]


def test_the_objective_uses_the_logits_not_the_models_own_loss():
    class Head(torch.nn.Module):
        def forward(self, input_ids, attention_mask, labels=None):
            assert labels is None  # no unweighted loss computed alongside
            return type("Out", (), {"logits": input_ids.float()})()

    batch = {
        "input_ids": torch.tensor([[3, 0], [0, 1]]),
        "attention_mask": torch.ones(2, 2),
        "labels": torch.tensor([0, 1]),
    }
    loss = WeightedCrossEntropy([1.0, 4.0])(Head(), batch)
    want = weighted_cross_entropy(batch["input_ids"].float(), batch["labels"], torch.tensor([1.0, 4.0]))
    assert math.isclose(float(loss), float(want))


def _job(**spec):
    base = {
        "model": {"from_config": {"hidden_size": 32, "num_heads": 4}, "tokenizer": {"type": "bpe"}},
        "task": "sequence_classification",
        "data": {"train": "d.jsonl", "format": "classification"},
    }
    return TrainingJob.model_validate(
        {
            "apiVersion": "kubetrain.dev/v1alpha1",
            "kind": "TrainingJob",
            "metadata": {"name": "w"},
            "spec": {**base, **spec},
        }
    )


def test_spec_takes_balanced_or_a_map_with_integer_labels():
    assert _job(training={"class_weights": "balanced"}).spec.training.class_weights == "balanced"
    assert _job(training={"class_weights": {0: 1, 1: 4.5}}).spec.training.class_weights == {
        "0": 1.0,
        "1": 4.5,
    }


@pytest.mark.parametrize(
    "spec, why",
    [
        ({"training": {"class_weights": {"a": 0}}}, "positive finite weight"),
        ({"training": {"class_weights": {}}}, "non-empty map"),
        ({"training": {"class_weights": "inverse"}}, "balanced"),
        (
            {
                "task": "causal_lm",
                "data": {"train": "d.jsonl", "format": "text"},
                "training": {"class_weights": "balanced"},
            },
            "class_weights needs task sequence_classification",
        ),
    ],
)
def test_spec_refuses_bad_class_weights(spec, why):
    with pytest.raises(ValidationError, match=why):
        _job(**spec)
