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
