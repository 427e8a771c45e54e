"""Chaining runs (model.init_from): where another job's result is, what it holds, and a local copy of it.

init_from names a TrainingJob (a bare RFC 1123 name: its published final model under
<checkpoint.storage>/<name>/final, where train/publish.py writes it) or a path (a local directory, written
with a '/', or a remote URI such as s3://...). What is there is either a PEFT adapter (adapter_config.json:
trained further on the base model of model.name_or_path) or a full transformers model (config.json).
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import re
from typing import Literal

from .. import storage

ADAPTER, MODEL = "adapter_config.json", "config.json"
_JOB_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


class InitFromError(ValueError):
    """model.init_from names nothing usable; the message says what was looked for and where."""


def location(ref: str, storage_root: str) -> str:
    """The directory or URI that init_from refers to (a job name -> that job's published final model)."""
    if _JOB_NAME.fullmatch(ref):
        return storage.join(storage_root, ref, "final")
    return ref if storage.is_remote(ref) else os.path.abspath(os.path.expanduser(ref))


def kind_at(where: str) -> Literal["adapter", "model"] | None:
    """What a directory or URI holds: a PEFT adapter, a full model, or None (missing or neither)."""
    for name, kind in ((ADAPTER, "adapter"), (MODEL, "model")):
        if storage.exists(storage.join(where, name)):
            return kind
    return None


def check(model_spec, storage_root: str) -> None:
    """Before anything starts: init_from must hold an adapter (on a model given by name_or_path) or a model."""
    ref = model_spec.init_from
    if ref is None:
        return
    where = location(ref, storage_root)
    job = bool(_JOB_NAME.fullmatch(ref))
    try:
        kind = kind_at(where)
    except OSError as e:
        raise InitFromError(f"spec.model.init_from: cannot read '{where}': {e}") from None
    if kind is None:
        what = (
            f"no published model of job '{ref}' at {where} (run that job first, or check "
            "spec.checkpoint.storage: it must be the storage that job used)"
            if job
            else f"'{where}' holds neither a PEFT adapter ({ADAPTER}) nor a transformers model ({MODEL})"
        )
        raise InitFromError(f"spec.model.init_from: {what}")
    if kind == "adapter" and model_spec.name_or_path is None:
        raise InitFromError(
            f"spec.model.init_from: '{ref}' holds a PEFT adapter; set spec.model.name_or_path to its base model"
        )


def local_copy(model_spec, storage_root: str, cache_root: str) -> tuple[str, str]:
    """(local directory, kind) of init_from; a remote one is downloaded once into the model cache."""
    where = location(model_spec.init_from, storage_root)
    kind = kind_at(where)
    if kind is None:
        check(model_spec, storage_root)  # raises with the reason
    if storage.is_remote(where):
        from .models import _materialise

        target = os.path.join(cache_root, "init--" + hashlib.sha256(where.encode()).hexdigest()[:16])
        remote = where
        where = _materialise(pathlib.Path(target), lambda out: storage.download_dir(remote, str(out)))
    return where, kind


def resolve(model_spec, storage_root: str, cache_root: str) -> tuple[str | None, str | None]:
    """(local directory, "adapter" | "model") of model.init_from, or (None, None) without it."""
    if model_spec.init_from is None:
        return None, None
    return local_copy(model_spec, storage_root, cache_root)
