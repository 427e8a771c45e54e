"""Held-out validation and data.train_fraction: seeded, and stratified by label for classification."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from kubetrain.runtime.train.data import load_splits
from kubetrain.spec.data import DataSpec


@pytest.fixture
def imbalanced(tmp_path):
    """200 records, 90% 'common' and 10% 'rare', the rare ones all at the end of the file."""
    rows = [{"text": f"t{i}", "label": "common" if i < 180 else "rare"} for i in range(200)]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _split(path, tmp_path, seed=7, **data):
    spec = DataSpec(train=path, format=data.pop("format", "classification"), **data)
    return load_splits(spec, seed, str(tmp_path))


def test_validation_keeps_the_class_proportions(imbalanced, tmp_path):
    s = _split(imbalanced, tmp_path, validation_split=0.2)
    assert Counter(s.validation["label"]) == {"common": 36, "rare": 4}
    assert Counter(s.train["label"]) == {"common": 144, "rare": 16}
    assert not set(s.validation["text"]) & set(s.train["text"])
    # shuffled, not in file order: the first records (max_validation_samples, eval_batches) hold the rare class
    assert "rare" in s.validation["label"][:20]
    again = _split(imbalanced, tmp_path, validation_split=0.2)
    assert again.validation["text"] == s.validation["text"]  # deterministic for a seed
    assert (
        _split(imbalanced, tmp_path, seed=8, validation_split=0.2).validation["text"] != s.validation["text"]
    )


def test_train_fraction_is_stratified_and_leaves_validation_alone(imbalanced, tmp_path):
    full = _split(imbalanced, tmp_path, validation_split=0.2)
    half = _split(imbalanced, tmp_path, validation_split=0.2, train_fraction=0.25)
    assert half.validation["text"] == full.validation["text"]
    assert Counter(half.train["label"]) == {"common": 36, "rare": 4}
    assert set(half.train["text"]) < set(full.train["text"])
    assert half.label_names == full.label_names == ["common", "rare"]
    assert (
        half.train["text"]
        == _split(imbalanced, tmp_path, validation_split=0.2, train_fraction=0.25).train["text"]
    )


def test_a_class_too_rare_to_stratify_falls_back_to_a_uniform_draw(tmp_path):
    rows = [{"text": f"t{i}", "label": "a"} for i in range(19)] + [{"text": "t19", "label": "b"}]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    s = _split(str(path), tmp_path, validation_split=0.25)
    assert len(s.validation) == 5 and len(s.train) == 15


def test_other_formats_split_as_before_and_take_a_fraction(tmp_path):
    import datasets

    rows = [{"text": f"line {i}"} for i in range(50)]
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    s = _split(str(path), tmp_path, format="text", validation_split=0.2, train_fraction=0.5)
    before = datasets.Dataset.from_list(rows).train_test_split(test_size=0.2, seed=7, shuffle=True)
    assert s.validation["text"] == before["test"]["text"]
    assert len(s.train) == 20 and set(s.train["text"]) < set(before["train"]["text"])
    with pytest.raises(ValueError, match="train_fraction"):
        DataSpec(train="x", train_fraction=0)
