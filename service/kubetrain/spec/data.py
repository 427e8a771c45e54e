"""Where the examples come from and how they become token sequences."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, model_validator
from pydantic_core import PydanticCustomError

from .base import Spec


class DataFields(Spec):
    """Column names to read from each record, per data format."""

    text: str = Field(
        "text", description="Plain text (format text) or the input text (format classification)."
    )
    prompt: str = Field("prompt", description="Instruction / prompt column (format instruction).")
    response: str = Field("response", description="Target answer column (format instruction).")
    messages: str = Field(
        "messages",
        description="List of {role, content} messages (format chat); assistant turns are trained on.",
    )
    label: str = Field("label", description="Class label column (format classification): int or string.")
    chosen: str = Field(
        "chosen",
        description="Preferred answer column (format preference): a string, an assistant message or a list "
        "of messages.",
    )
    rejected: str = Field(
        "rejected", description="Dispreferred answer column (format preference), in the same forms as chosen."
    )


FORMATS = ("text", "instruction", "chat", "classification", "preference")


def _known_format(value):
    """The formats in one sentence, preference (DPO's) named with its task."""
    if isinstance(value, str) and value not in FORMATS:
        raise PydanticCustomError(
            "literal_error",
            "Input should be 'text', 'instruction', 'chat' or 'classification' (or 'preference' with task dpo)",
        )
    return value


class DataSpec(Spec):
    """Training and validation sources, their format, and how they are tokenized."""

    train: str = Field(
        ...,
        min_length=1,
        description="Training data: a local file or directory (.jsonl/.json/.csv/.parquet), s3://bucket/key, "
        "or hf://datasets/org/name. Relative paths are relative to the working directory.",
    )
    validation: str | None = Field(
        None,
        description="Validation data in the same forms; when absent, validation_split of train is held out.",
    )
    validation_split: float = Field(
        0.1,
        ge=0.0,
        lt=1.0,
        description="Fraction of train held out for validation when no validation source is set (stratified by "
        "label for format classification: the held-out part keeps the class proportions).",
    )
    format: Annotated[
        Literal["text", "instruction", "chat", "classification", "preference"], BeforeValidator(_known_format)
    ] = Field(
        "instruction",
        description="text: language modelling on a text column; instruction: prompt -> response; "
        "chat: a messages list; classification: text -> label; preference: prompt (a string or a messages "
        "list) with a chosen and a rejected answer (task dpo).",
    )
    file_type: Literal["auto", "json", "csv", "parquet"] = Field(
        "auto", description="File parser; auto picks from the file extension."
    )
    fields: DataFields = Field(default_factory=DataFields, description="Column names per format.")
    system_prompt: str | None = Field(
        None, description="System message prepended to instruction data when the chat template is used."
    )
    use_chat_template: bool = Field(
        True, description="Render instruction/chat data with the tokenizer's chat template when it has one."
    )
    mask_prompt: bool = Field(
        True, description="Train only on response / assistant tokens (prompt tokens get no loss)."
    )
    max_length: int = Field(
        512, ge=8, le=1_048_576, description="Sequences are truncated to this many tokens."
    )
    packing: bool = Field(
        False, description="Concatenate text examples into full max_length blocks (format text only)."
    )
    train_fraction: float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description="Train on this fraction of the training split: a seeded subset (stratified by label for "
        "format classification), drawn after the validation split, so validation stays the same; sweep it for "
        "a learning curve.",
    )
    max_train_samples: int | None = Field(None, ge=1, description="Use at most this many training records.")
    max_validation_samples: int | None = Field(
        None, ge=1, description="Use at most this many validation records."
    )

    @model_validator(mode="after")
    def _packing_only_text(self) -> DataSpec:
        if self.packing and self.format != "text":
            raise ValueError(f"packing applies to format 'text' only, not '{self.format}'")
        return self
