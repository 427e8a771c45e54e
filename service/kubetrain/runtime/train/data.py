"""Turning data sources into tokenized examples: file loading, formats, prompt masking, packing."""

from __future__ import annotations

import json
import os
import pathlib
from dataclasses import dataclass
from typing import Any

from ...spec.data import DataSpec

IGNORE = -100
_EXT = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


class DataError(ValueError):
    """The data does not match the spec; the message names the spec field."""


@dataclass
class Splits:
    """Raw records of the training and validation sets, and where the label names came from."""

    train: Any
    validation: Any
    label_names: list[str] | None = None


def _builder(source: str, file_type: str) -> tuple[str, dict]:
    if source.startswith("hf://datasets/"):
        return source.removeprefix("hf://datasets/"), {}
    path = source
    if "://" not in source:
        p = pathlib.Path(source)
        if not p.exists():
            raise DataError(f"spec.data: file '{source}' does not exist")
        if p.is_dir():
            files = sorted(str(f) for f in p.iterdir() if f.suffix in _EXT)
            if not files:
                raise DataError(f"spec.data: directory '{source}' has no .jsonl/.json/.csv/.parquet files")
            path = files
            suffix = pathlib.Path(files[0]).suffix
        else:
            suffix = p.suffix
    else:
        suffix = pathlib.PurePosixPath(source).suffix
    kind = file_type if file_type != "auto" else _EXT.get(suffix)
    if kind is None:
        raise DataError(
            f"spec.data.file_type: cannot infer the format of '{source}'; set json, csv or parquet"
        )
    return kind, {"data_files": path}


def load_source(source: str, file_type: str, cache_dir: str):
    """One data source as a datasets.Dataset (local file or directory, s3://, hf://datasets/...).

    JSON is read with the json module so values keep the types written (pyarrow would turn
    "2021-03-05" into a timestamp); CSV and Parquet go through the datasets builders.
    """
    import datasets

    datasets.disable_progress_bars()
    builder, kwargs = _builder(source, file_type)
    try:
        if builder == "json":
            files = kwargs["data_files"]
            return datasets.Dataset.from_list(
                [r for f in ([files] if isinstance(files, str) else files) for r in _read_json_records(f)]
            )
        return datasets.load_dataset(builder, split="train", cache_dir=cache_dir, **kwargs)
    except (FileNotFoundError, ConnectionError, OSError) as e:
        raise DataError(f"spec.data: cannot load '{source}': {e}") from None


def _read_json_records(path: str) -> list[dict]:
    """Records of a JSON Lines file, or of a JSON file holding a list of records (local or s3://)."""
    if "://" in path:
        from pyarrow import fs

        filesystem, inner = fs.FileSystem.from_uri(path)
        with filesystem.open_input_stream(inner) as f:
            text = f.read().decode()
    else:
        text = pathlib.Path(path).read_text()
    stripped = text.lstrip()
    try:
        if stripped.startswith("["):
            rows = json.loads(stripped)
        else:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise DataError(f"spec.data: '{path}' is not valid JSON / JSON Lines: {e}") from None
    if not all(isinstance(r, dict) for r in rows):
        raise DataError(f"spec.data: '{path}' must hold JSON objects (one record each)")
    return rows


def check_source(spec: DataSpec) -> None:
    """Cheap early check of local sources (the first record's columns), before any worker starts."""
    import itertools

    for key in ("train", "validation"):
        source = getattr(spec, key)
        if not source or "://" in source or pathlib.Path(source).is_dir():
            continue
        builder, _ = _builder(source, spec.file_type)
        if builder == "json":
            first = _read_json_records(source)[:1]
        elif builder == "csv":
            import csv

            with open(source, newline="") as f:
                first = list(itertools.islice(csv.DictReader(f), 1))
        else:
            import pyarrow.parquet as pq

            first = [dict.fromkeys(pq.read_schema(source).names)]
        if not first:
            raise DataError(f"spec.data.{key}: '{source}' has no records")
        _check_columns_of(list(first[0]), spec)


def load_splits(spec: DataSpec, seed: int, cache_dir: str) -> Splits:
    """Training and validation records. A held-out validation split and the train_fraction subset are
    seeded and, for classification, stratified (train/subsets.py); the fraction is taken last, so validation
    and the label names are the same for every fraction."""
    from .subsets import hold_out, take_fraction

    train = load_source(spec.train, spec.file_type, cache_dir)
    _check_columns(train, spec)
    stratify = spec.fields.label if spec.format == "classification" else None
    if spec.validation:
        validation = load_source(spec.validation, spec.file_type, cache_dir)
    elif spec.validation_split > 0:
        train, validation = hold_out(train, spec.validation_split, seed, stratify)
    else:
        validation = None
    if spec.max_train_samples:
        train = train.select(range(min(spec.max_train_samples, len(train))))
    if validation is not None and spec.max_validation_samples:
        validation = validation.select(range(min(spec.max_validation_samples, len(validation))))
    label_names = None
    if spec.format == "classification":
        values = sorted({str(v) for v in train[spec.fields.label]})
        label_names = values
    train = take_fraction(train, spec.train_fraction, seed, stratify)
    return Splits(train, validation, label_names)


def _check_columns(ds, spec: DataSpec) -> None:
    _check_columns_of(ds.column_names, spec)


def _check_columns_of(columns: list[str], spec: DataSpec) -> None:
    f = spec.fields
    need = {
        "text": [f.text],
        "instruction": [f.prompt, f.response],
        "chat": [f.messages],
        "classification": [f.text, f.label],
        "preference": [f.prompt, f.chosen, f.rejected],
    }[spec.format]
    missing = [c for c in need if c not in columns]
    if missing:
        raise DataError(
            f"spec.data.fields: format '{spec.format}' needs column(s) {missing}, but the data has "
            f"{columns}; map them with spec.data.fields"
        )


class Formatter:
    """Renders one record as (prompt text, full text) for instruction/chat data, honouring the chat template."""

    def __init__(self, spec: DataSpec, tokenizer):
        self.spec, self.tok = spec, tokenizer
        self.templated = spec.use_chat_template and bool(getattr(tokenizer, "chat_template", None))
        # what closes an answer: the chat turn terminator when the template has one, else EOS
        im_end = (
            "<|im_end|>"
            if self.templated
            and tokenizer.convert_tokens_to_ids("<|im_end|>") not in (None, tokenizer.unk_token_id)
            else None
        )
        self.answer_end = f"{im_end}\n" if im_end else (tokenizer.eos_token or "")

    def _system(self) -> list[dict]:
        return [{"role": "system", "content": self.spec.system_prompt}] if self.spec.system_prompt else []

    def prompt(self, record: dict) -> str:
        f = self.spec.fields
        if self.spec.format == "chat":
            messages = list(record[f.messages])
            if messages and messages[-1]["role"] == "assistant":
                messages = messages[:-1]
            return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if self.templated:
            messages = self._system() + [{"role": "user", "content": record[f.prompt]}]
            return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        system = f"{self.spec.system_prompt}\n" if self.spec.system_prompt else ""
        return f"{system}{record[f.prompt]}\n"

    def display(self, record: dict) -> str:
        """The user's words of a record (for showing examples), without template markup."""
        f = self.spec.fields
        if self.spec.format == "chat":
            users = [m["content"] for m in record[f.messages] if m["role"] == "user"]
            return users[-1] if users else ""
        return str(record[f.prompt])

    def reference(self, record: dict) -> str:
        f = self.spec.fields
        if self.spec.format == "chat":
            last = record[f.messages][-1]
            return last["content"] if last["role"] == "assistant" else ""
        return str(record[f.response])

    def encode(self, record: dict) -> dict:
        """input_ids and labels; prompt tokens get IGNORE labels when mask_prompt is set."""
        tok, spec = self.tok, self.spec
        if spec.format == "chat":
            return self._encode_chat(record)
        prompt = self.prompt(record)
        answer = self.reference(record)
        end = self.answer_end
        prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        answer_ids = tok(answer + end, add_special_tokens=False)["input_ids"]
        ids = (prompt_ids + answer_ids)[: spec.max_length]
        labels = ([IGNORE] * len(prompt_ids) if spec.mask_prompt else list(prompt_ids)) + answer_ids
        return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels[: spec.max_length]}

    def _encode_chat(self, record: dict) -> dict:
        """Assistant turns are learned; everything before each assistant turn is masked."""
        tok, spec = self.tok, self.spec
        messages = list(record[spec.fields.messages])
        ids: list[int] = []
        labels: list[int] = []
        for i, msg in enumerate(messages):
            text = tok.apply_chat_template(messages[: i + 1], tokenize=False)
            full = tok(text, add_special_tokens=False)["input_ids"]
            new = full[len(ids) :]
            learn = msg["role"] == "assistant" or not spec.mask_prompt
            ids += new
            labels += new if learn else [IGNORE] * len(new)
        ids, labels = ids[: spec.max_length], labels[: spec.max_length]
        return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}


def tokenize(ds, spec: DataSpec, tokenizer, label_names: list[str] | None = None):
    """Tokenize a split for training: instruction/chat via Formatter, text (optionally packed), classification."""
    if ds is None:
        return None
    f = spec.fields
    cols = ds.column_names
    if spec.format in ("instruction", "chat"):
        fmt = Formatter(spec, tokenizer)
        encoded = ds.map(fmt.encode, remove_columns=cols, keep_in_memory=True)
        # A prompt that fills max_length leaves no target token: such a record teaches nothing, and a batch
        # made only of them has a 0/0 loss. Drop them (the rest must remain).
        kept = encoded.filter(_teaches, keep_in_memory=True)
        if len(encoded) and not len(kept):
            raise ValueError(
                f"spec.data.max_length: {spec.max_length} tokens leave no response token in any record; raise it"
            )
        return kept
    if spec.format == "classification":
        index = {name: i for i, name in enumerate(label_names or [])}

        def encode(batch):
            out = tokenizer(batch[f.text], truncation=True, max_length=spec.max_length)
            out["labels"] = [index[str(v)] for v in batch[f.label]]
            return out

        return ds.map(encode, batched=True, remove_columns=cols, keep_in_memory=True)

    eos = tokenizer.eos_token or ""

    def encode_text(batch):
        if not spec.packing:
            out = tokenizer([t + eos for t in batch[f.text]], truncation=True, max_length=spec.max_length)
            out["labels"] = [list(x) for x in out["input_ids"]]
            return out
        ids = [i for t in batch[f.text] for i in tokenizer(t + eos, add_special_tokens=False)["input_ids"]]
        n = spec.max_length
        blocks = [ids[i : i + n] for i in range(0, len(ids) - n + 1, n)]
        return {
            "input_ids": blocks,
            "attention_mask": [[1] * n for _ in blocks],
            "labels": [list(b) for b in blocks],
        }

    return ds.map(encode_text, batched=True, remove_columns=cols, keep_in_memory=True)


def collate(tokenizer, classification: bool):
    """Right-pads a batch (transformers' collators): labels padded with IGNORE (LM) or stacked (classification).

    Only the model's inputs go through (a tokenizer may add token_type_ids). The collators pad on the
    tokenizer's side, which generation sets to left on the shared tokenizer: they get a right-padding copy.
    """
    import copy

    from transformers import DataCollatorForSeq2Seq, DataCollatorWithPadding

    right = copy.copy(tokenizer)
    right.padding_side = "right"
    if classification:
        collator = DataCollatorWithPadding(right, return_tensors="pt")
    else:
        collator = DataCollatorForSeq2Seq(right, label_pad_token_id=IGNORE, return_tensors="pt")

    def fn(rows: list[dict]) -> dict:
        return dict(collator([{k: r[k] for k in ("input_ids", "attention_mask", "labels")} for r in rows]))

    return fn


def datasets_cache(root: str) -> str:
    path = os.path.join(root, "datasets")
    os.makedirs(path, exist_ok=True)
    return path


def _teaches(record: dict) -> bool:
    """A record with at least one target token. A named function, not a lambda: datasets fingerprints the
    filter with dill, which disassembles a lambda's code onto stdout (in every worker's log)."""
    return any(t != IGNORE for t in record["labels"])
