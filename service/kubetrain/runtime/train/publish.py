"""Publishing a trained model: the whole model gathered by the engine, written by rank 0 atomically."""

from __future__ import annotations

import json
import os
import shutil
import tempfile

from .. import storage


def publish_model(
    engine,
    rank: int,
    tokenizer,
    dest: str,
    merge: bool = False,
    info: dict | None = None,
    mirror: str | None = None,
) -> None:
    """Collective: the whole model gathered by the engine; rank 0 writes it (see write_model), and copies it
    to `mirror` in the job's remote storage, where a driver on another node finds it."""
    with engine.whole_model() as whole:
        if rank == 0:
            write_model(whole, tokenizer, dest, merge, info)
            if mirror:
                storage.upload_dir(dest, mirror)


def write_model(model, tokenizer, dest: str, merge: bool = False, info: dict | None = None) -> None:
    """The adapter (or full model) and tokenizer, written to a temp dir beside dest and renamed into place,
    so dest is always either the previous complete copy or the new complete copy."""
    parent = os.path.dirname(dest)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="." + os.path.basename(dest) + "-", dir=parent)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if info:
        with open(os.path.join(tmp, "kubetrain_model.json"), "w") as f:
            json.dump(info, f)
    if merge:
        merged = _merged(model)
        merged.save_pretrained(os.path.join(tmp, "merged"))
        tokenizer.save_pretrained(os.path.join(tmp, "merged"))
    old = None
    if os.path.exists(dest):
        old = tempfile.mkdtemp(prefix="." + os.path.basename(dest) + "-old-", dir=parent)
        os.replace(dest, os.path.join(old, "x"))
    os.replace(tmp, dest)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def _merged(model):
    """The adapter merged into the base; a 4-bit (QLoRA) base is dequantized first (train/quantize.py)."""
    if getattr(model, "is_loaded_in_4bit", False):
        from .quantize import merged_full_precision

        return merged_full_precision(model)
    return model.merge_and_unload()
