"""Preference records (prompt, chosen, rejected) as token pairs for DPO, prompt-masked as SFT masks prompts.

A record's prompt is a string or a list of {role, content} messages; chosen and rejected are strings, an
assistant message, or a list holding one assistant message. Both answers follow the same prompt text as
data.Formatter renders it (chat template, system prompt, answer terminator), so a DPO run continues an SFT
run on exactly the text that run was trained on. A batch is the chosen sequences followed by the rejected
ones (2 x batch rows): one forward pass scores both.
"""

from __future__ import annotations

from ...spec.data import DataSpec
from .data import IGNORE, DataError, Formatter, collate


def _answer(value, column: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
        if value[0].get("role", "assistant") == "assistant" and isinstance(value[0].get("content"), str):
            return value[0]["content"]
    raise DataError(
        f"spec.data.fields: column '{column}' must hold a string, an assistant message "
        f"{{role: assistant, content: ...}} or a list of one such message; got {str(value)[:80]!r}"
    )


class PreferenceFormatter(Formatter):
    """Formatter for preference records: prompt text as for instruction data, the chosen answer as reference
    (what generation evaluation scores: the preferred behaviour)."""

    def __init__(self, spec: DataSpec, tokenizer):
        super().__init__(spec.model_copy(update={"format": "instruction"}), tokenizer)
        self.preference = spec

    def prompt(self, record: dict) -> str:
        value = record[self.spec.fields.prompt]
        if isinstance(value, str):
            return super().prompt(record)
        if not isinstance(value, list) or not all(isinstance(m, dict) and "content" in m for m in value):
            raise DataError(
                f"spec.data.fields.prompt: column '{self.spec.fields.prompt}' must hold a string or a list "
                "of {role, content} messages"
            )
        messages = list(value)
        if not any(m.get("role") == "system" for m in messages):
            messages = self._system() + messages
        if self.templated:
            return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return "".join(f"{m['content']}\n" for m in messages)

    def display(self, record: dict) -> str:
        value = record[self.spec.fields.prompt]
        if isinstance(value, str):
            return value
        users = [m["content"] for m in value if m.get("role") == "user"]
        return users[-1] if users else ""

    def reference(self, record: dict) -> str:
        f = self.preference.fields
        return _answer(record[f.chosen], f.chosen)

    def encode_pair(self, record: dict) -> dict:
        """chosen_/rejected_ input_ids and labels; prompt tokens are IGNORE (they get no log-prob)."""
        f, max_len = self.preference.fields, self.spec.max_length
        prompt_ids = self.tok(self.prompt(record), add_special_tokens=False)["input_ids"]
        out = {}
        for side, column in (("chosen", f.chosen), ("rejected", f.rejected)):
            answer = _answer(record[column], column) + self.answer_end
            answer_ids = self.tok(answer, add_special_tokens=False)["input_ids"]
            ids = (prompt_ids + answer_ids)[:max_len]
            labels = ([IGNORE] * len(prompt_ids) + answer_ids)[:max_len]
            out[f"{side}_input_ids"], out[f"{side}_labels"] = ids, labels
        return out


def tokenize_pairs(ds, spec: DataSpec, tokenizer):
    """A split of preference records as token pairs; pairs whose prompt leaves no answer token are dropped."""
    if ds is None:
        return None
    fmt = PreferenceFormatter(spec, tokenizer)
    encoded = ds.map(fmt.encode_pair, remove_columns=ds.column_names, keep_in_memory=True)
    kept = encoded.filter(
        lambda r: (
            any(t != IGNORE for t in r["chosen_labels"]) and any(t != IGNORE for t in r["rejected_labels"])
        ),
        keep_in_memory=True,
    )
    if len(encoded) and not len(kept):
        raise ValueError(
            f"spec.data.max_length: {spec.max_length} tokens leave no answer token in any preference pair; raise it"
        )
    return kept


def collate_pairs(tokenizer):
    """Right-padded batch of 2n rows: the n chosen sequences, then their n rejected ones in the same order."""
    pad = collate(tokenizer, classification=False)

    def fn(rows: list[dict]) -> dict:
        seqs = [
            {
                "input_ids": r[f"{side}_input_ids"],
                "attention_mask": [1] * len(r[f"{side}_input_ids"]),
                "labels": r[f"{side}_labels"],
            }
            for side in ("chosen", "rejected")
            for r in rows
        ]
        return pad(seqs)

    return fn


def tokenize_splits(splits, spec: DataSpec, tokenizer):
    """(train pairs, validation pairs or None, collator) for the recipe."""
    return (
        tokenize_pairs(splits.train, spec, tokenizer),
        tokenize_pairs(splits.validation, spec, tokenizer),
        collate_pairs(tokenizer),
    )
