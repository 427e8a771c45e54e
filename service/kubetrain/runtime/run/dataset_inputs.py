"""The run's training and validation data as MLflow dataset inputs: source, digest, cheap profile and schema.

Nothing is loaded just for this: local files are read once, in blocks, for their sha256 (the same pass also
gives the run's `data.fingerprint` tag), rows are counted for JSON Lines and read from Parquet metadata,
and the schema comes from the first records only. Remote sources (s3://, hf://) are described by their
URI; their bytes are not fetched to the driver (the workers read them), so their digest hashes the URI.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import warnings
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from ...spec.data import DataSpec

DIGEST_CHARS = 32  # MLflow stores a dataset digest in 36 characters; the full sha256 is in the profile
SCHEMA_RECORDS = 50  # records read to infer the schema


@dataclass
class DatasetRecord:
    """One dataset input of the run, ready to become an MLflow DatasetInput."""

    name: str
    source: str  # the URI or absolute path as the spec gives it (no credentials)
    context: str  # "training" or "validation"
    sha256: str
    profile: dict = field(default_factory=dict)
    columns: list[tuple[str, str]] | None = None  # (name, MLflow data type) from the first records

    @property
    def digest(self) -> str:
        return self.sha256[:DIGEST_CHARS]


@dataclass
class DataLineage:
    """The combined fingerprint (the run's `data.fingerprint` tag) and one record per dataset."""

    fingerprint: str
    datasets: list[DatasetRecord]


def describe(spec: DataSpec, seed: int | None = None) -> DataLineage:
    """Hash every source once: the combined fingerprint (as train/data.py's fingerprint) and per source."""
    combined = hashlib.sha256()
    records = []
    for context, source in (("training", spec.train), ("validation", spec.validation)):
        if not source:
            continue
        own = hashlib.sha256()
        profile = _feed(source, (combined, own))
        records.append(
            DatasetRecord(
                name=_name(source, context),
                source=public_uri(source),
                context=context,
                sha256=own.hexdigest(),
                profile={"sha256": own.hexdigest(), **profile},
                columns=_columns(source),
            )
        )
    if not spec.validation and spec.validation_split > 0 and records:
        records.append(_held_out(records[0], spec.validation_split, seed))
    return DataLineage(combined.hexdigest(), records)


def _feed(source: str, hashers: tuple) -> dict:
    """Feed the source's bytes (or, for a URI or a missing file, its path text) to every hasher.

    Walks the files in sorted order, so the combined hash is the `data.fingerprint` tag runs have always had.
    """
    p = pathlib.Path(source)
    files = sorted(p.iterdir()) if p.is_dir() else [p]
    count, size, rows = 0, 0, 0
    for f in files:
        if not f.is_file():
            for h in hashers:
                h.update(str(f).encode())
            continue
        count += 1
        last = b""
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                for h in hashers:
                    h.update(block)
                size += len(block)
                rows += block.count(b"\n")
                last = block
        rows += 1 if last and not last.endswith(b"\n") else 0
    if not count:
        return {}
    profile = {"files": count, "bytes": size}
    kinds = {f.suffix for f in files if f.is_file()}
    if kinds == {".jsonl"}:
        profile["rows"] = rows
    elif kinds <= {".parquet", ".pq"}:
        profile["rows"] = _parquet_rows([f for f in files if f.is_file()])
    return profile


def _parquet_rows(files: list[pathlib.Path]) -> int | None:
    try:
        import pyarrow.parquet as pq

        return sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    except Exception:  # a profile is a nicety: never fail the run for it
        return None


def _held_out(train: DatasetRecord, fraction: float, seed: int | None) -> DatasetRecord:
    """The validation split drawn from the training source: same bytes, its own digest (fraction, seed)."""
    own = hashlib.sha256(f"{train.sha256}:validation_split={fraction}:seed={seed}".encode()).hexdigest()
    profile = {"sha256": own, "split_of": train.name, "validation_split": fraction, "seed": seed}
    return DatasetRecord(
        name=f"{train.name}-held-out",
        source=train.source,
        context="validation",
        sha256=own,
        profile=profile,
        columns=train.columns,
    )


def _name(source: str, context: str) -> str:
    """A readable dataset name: the hub dataset id, else the parent folder and file name."""
    if source.startswith("hf://datasets/"):
        return source.removeprefix("hf://datasets/")
    parts = (
        [p for p in urlsplit(source).path.split("/") if p] if "://" in source else pathlib.Path(source).parts
    )
    return "/".join(parts[-2:]) if parts else context


def public_uri(uri: str) -> str:
    """The URI without any user:password@ part (credentials belong in the environment, never in MLflow)."""
    if "://" not in uri:
        return uri
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def _columns(source: str) -> list[tuple[str, str]] | None:
    """Column names and types from the first records of a local .jsonl/.csv/.parquet file (else None)."""
    p = pathlib.Path(source)
    if "://" in source or not p.exists():
        return None
    files = sorted(f for f in p.iterdir() if f.is_file()) if p.is_dir() else [p]
    if not files:
        return None
    try:
        import pandas as pd

        f = files[0]
        if f.suffix == ".jsonl":
            with open(f) as fh:
                lines = [line for _, line in zip(range(SCHEMA_RECORDS), fh) if line.strip()]
            frame = pd.DataFrame([json.loads(line) for line in lines])
        elif f.suffix == ".csv":
            frame = pd.read_csv(f, nrows=SCHEMA_RECORDS)
        elif f.suffix in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            frame = next(pq.ParquetFile(f).iter_batches(batch_size=SCHEMA_RECORDS)).to_pandas()
        else:
            return None  # a .json array would have to be read whole
        return [(str(c), _kind(frame[c])) for c in frame.columns]
    except Exception:  # unreadable here: the workers will say why; the schema is optional
        return None


def _kind(column) -> str:
    """The MLflow data type name of a pandas column; 'string' for anything nested (chat messages...)."""
    from pandas.api import types

    if types.is_bool_dtype(column):
        return "boolean"
    if types.is_integer_dtype(column):
        return "long"
    if types.is_float_dtype(column):
        return "double"
    return "string"


def to_inputs(records: list[DatasetRecord]) -> list:
    """MLflow DatasetInputs (a meta dataset: source, digest, schema, profile; no data copied)."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.types import ColSpec, Schema
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    inputs = []
    for r in records:
        schema = Schema([ColSpec(kind, name) for name, kind in r.columns]) if r.columns else None
        dataset = MetaDataset(_source(r.source, resolve_dataset_source), r.name, r.digest, schema)
        d = dataset.to_dict()  # name, digest, source type, source and schema as MLflow writes them
        entity = Dataset(
            d["name"], d["digest"], d["source_type"], d["source"], d.get("schema"), json.dumps(r.profile)
        )
        inputs.append(DatasetInput(entity, tags=[InputTag(MLFLOW_DATASET_CONTEXT, r.context)]))
    return inputs


def _source(uri: str, resolve):
    if uri.startswith("hf://datasets/"):
        from mlflow.data.huggingface_dataset_source import HuggingFaceDatasetSource

        return HuggingFaceDatasetSource(path=uri.removeprefix("hf://datasets/"))
    try:
        with warnings.catch_warnings():  # a local path matches MLflow's local source twice; either is right
            warnings.simplefilter("ignore", UserWarning)
            return resolve(uri)
    except Exception:  # a scheme MLflow has no source type for: keep the URI as an HTTP-like reference
        from mlflow.data.http_dataset_source import HTTPDatasetSource

        return HTTPDatasetSource(uri)
