"""Data formats become the right token sequences: prompt masking, chat turns, packing, classification labels."""

from __future__ import annotations

import json

import datasets
import pytest

from kubetrain.runtime.train.data import IGNORE, DataError, Formatter, check_source, load_source, tokenize
from kubetrain.runtime.train.models import build_tokenizer
from kubetrain.spec.data import DataSpec
from kubetrain.spec.model import ModelSpec

TEXTS = ["the quick brown fox jumps over the lazy dog", "2021-03-05 is a date", "hello world"] * 20


@pytest.fixture(scope="module")
def tok():
    spec = ModelSpec(
        from_config={"hidden_size": 32, "num_heads": 4}, tokenizer={"type": "bpe", "vocab_size": 300}
    )
    return build_tokenizer(spec, None, iter(TEXTS))


def test_json_values_keep_their_types(tmp_path):
    """pyarrow would read "2021-03-05" as a timestamp; records must keep the strings as written."""
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps({"prompt": "p", "response": "2021-03-05"}) + "\n")
    ds = load_source(str(f), "auto", str(tmp_path))
    assert ds[0]["response"] == "2021-03-05"


def test_instruction_masks_the_prompt(tok):
    spec = DataSpec(train="x", format="instruction", max_length=64)
    enc = Formatter(spec, tok).encode({"prompt": "hello world", "response": "the dog"})
    learned = [t for t in enc["labels"] if t != IGNORE]
    assert tok.decode(learned) == "the dog" + tok.eos_token
    assert enc["labels"][: len(enc["labels"]) - len(learned)] == [IGNORE] * (
        len(enc["labels"]) - len(learned)
    )
    unmasked = Formatter(spec.model_copy(update={"mask_prompt": False}), tok).encode(
        {"prompt": "hello world", "response": "the dog"}
    )
    assert unmasked["labels"] == unmasked["input_ids"]


def test_truncation_respects_max_length(tok):
    spec = DataSpec(train="x", format="instruction", max_length=8)
    enc = Formatter(spec, tok).encode({"prompt": " ".join(TEXTS[:5]), "response": "x"})
    assert len(enc["input_ids"]) == len(enc["labels"]) == 8


def test_chat_learns_only_assistant_turns(smollm2_tokenizer):
    spec = DataSpec(train="x", format="chat", max_length=256)
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello there"},
        {"role": "user", "content": "bye"},
        {"role": "assistant", "content": "see you"},
    ]
    enc = Formatter(spec, smollm2_tokenizer).encode({"messages": messages})
    learned = smollm2_tokenizer.decode([t for t in enc["labels"] if t != IGNORE])
    assert "hello there" in learned and "see you" in learned
    assert "hi" not in learned.replace("hello there", "") and "bye" not in learned


@pytest.fixture(scope="module")
def smollm2_tokenizer(smollm2_dir):
    return build_tokenizer(ModelSpec(name_or_path=smollm2_dir), smollm2_dir)


def test_packing_makes_full_blocks(tok):
    spec = DataSpec(train="x", format="text", max_length=16, packing=True)
    out = tokenize(datasets.Dataset.from_list([{"text": t} for t in TEXTS]), spec, tok)
    assert len(out) > 0 and all(len(r["input_ids"]) == 16 and r["labels"] == r["input_ids"] for r in out)


def test_classification_labels_are_indexed(tok):
    spec = DataSpec(train="x", format="classification", max_length=16)
    ds = datasets.Dataset.from_list([{"text": "good", "label": "pos"}, {"text": "bad", "label": "neg"}])
    out = tokenize(ds, spec, tok, ["neg", "pos"])
    assert [r["labels"] for r in out] == [1, 0]


@pytest.mark.parametrize(
    "content,fragment",
    [
        ('{"text": "a"}\n', "needs column(s) ['prompt', 'response']"),
        ("", "has no records"),
        ("[1, 2]", "must hold JSON objects"),
        ("{not json", "not valid JSON"),
    ],
)
def test_bad_data_is_named_before_training(tmp_path, content, fragment):
    f = tmp_path / "train.jsonl"
    f.write_text(content)
    with pytest.raises(DataError) as e:
        check_source(DataSpec(train=str(f)))
    assert fragment in str(e.value) and str(e.value).startswith("spec.data")


def _collate_before(tokenizer, classification: bool):
    """The hand-written collate that transformers' collators replaced: the reference batches."""
    import torch

    pad = tokenizer.pad_token_id

    def fn(rows: list[dict]) -> dict:
        n = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), n), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), n), dtype=torch.long)
        labels = (
            torch.tensor([r["labels"] for r in rows])
            if classification
            else torch.full((len(rows), n), IGNORE)
        )
        for i, r in enumerate(rows):
            k = len(r["input_ids"])
            ids[i, :k] = torch.tensor(r["input_ids"])
            mask[i, :k] = 1
            if not classification:
                labels[i, : len(r["labels"])] = torch.tensor(r["labels"])
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    return fn


@pytest.mark.parametrize("fmt", ["instruction", "text", "classification"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_collate_pads_exactly_as_before(tok, fmt, side):
    import torch

    from kubetrain.runtime.train.data import collate

    records = {
        "instruction": [{"prompt": t, "response": t[::-1][: 5 + i]} for i, t in enumerate(TEXTS[:6])],
        "text": [{"text": t} for t in TEXTS[:6]],
        "classification": [{"text": t, "label": "ab"[i % 2]} for i, t in enumerate(TEXTS[:6])],
    }[fmt]
    spec = DataSpec(train="x", format=fmt, max_length=40, mask_prompt=True)
    rows = list(tokenize(datasets.Dataset.from_list(records), spec, tok, ["a", "b"]))
    assert len({len(r["input_ids"]) for r in rows}) > 1  # the batch needs padding
    tok.padding_side = (
        side  # generation sets left on the shared tokenizer; training batches stay right-padded
    )
    try:
        got = collate(tok, fmt == "classification")(rows)
    finally:
        tok.padding_side = "right"
    want = _collate_before(tok, fmt == "classification")(rows)
    assert sorted(got) == sorted(want)
    for key in want:
        assert got[key].dtype == want[key].dtype and torch.equal(got[key], want[key]), key
