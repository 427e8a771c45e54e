"""Integration fixtures: one local Ray for the session, a tiny job factory, small data sets on disk."""

from __future__ import annotations

import copy
import json
import random

import pytest

from tests.conftest import ROOT

TINY = {
    "apiVersion": "kubetrain.dev/v1alpha1",
    "kind": "TrainingJob",
    "metadata": {"name": "tiny"},
    "spec": {
        "model": {
            "from_config": {"architecture": "llama", "hidden_size": 32, "num_layers": 2, "num_heads": 4},
            "tokenizer": {"type": "bpe", "vocab_size": 300},
        },
        "data": {
            "train": str(ROOT / "jobs/data/dates/train.jsonl"),
            "validation": str(ROOT / "jobs/data/dates/validation.jsonl"),
            "format": "instruction",
            "max_length": 64,
            "max_train_samples": 256,
            "max_validation_samples": 32,
        },
        "peft": {"type": "lora", "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
        "training": {
            "max_steps": 8,
            "batch_size": 4,
            "learning_rate": 0.01,
            "eval_every": 4,
            "seed": 7,
            "warmup_steps": 2,
        },
        "resources": {"workers": 2, "cpus_per_worker": 1},
        "checkpoint": {"every": 2, "keep_last": 2},
        "lifecycle": {"max_worker_failures": 0},
    },
}


@pytest.fixture(scope="session")
def ray_session():
    import ray

    from kubetrain.runtime.run.ray_start import start_local_ray

    start_local_ray(num_cpus=2)
    yield ray
    ray.shutdown()


def job_factory(root):
    """make(name, **dotted_overrides): a validated tiny TrainingJob storing under root."""
    from kubetrain.spec import set_path, validate_job

    def make(name: str = "tiny", **overrides):
        data = copy.deepcopy(TINY)
        data["metadata"]["name"] = name
        data["spec"]["checkpoint"]["storage"] = str(root / "runs")
        data["spec"]["tracking"] = {"tracking_uri": f"sqlite:///{root}/mlflow.db"}
        for path, value in overrides.items():
            set_path(data, path.replace("__", "."), value)
        return validate_job(data)

    return make


@pytest.fixture
def tiny_job(tmp_path):
    """Factory: a validated tiny TrainingJob storing under tmp_path, with dotted overrides."""
    return job_factory(tmp_path)


@pytest.fixture(scope="module")
def tiny_job_module(tmp_path_factory):
    """tiny_job for module-scoped fixtures (a reference run shared by a module's tests)."""
    return job_factory(tmp_path_factory.mktemp("module-jobs"))


@pytest.fixture(scope="session")
def sentiment_file(tmp_path_factory):
    """A small, learnable two-class data set (positive / negative words), deterministic."""
    rng = random.Random(3)
    pos, neg = ["good", "great", "lovely", "superb"], ["bad", "awful", "poor", "dreadful"]
    rows = []
    for i in range(240):
        label = i % 2
        words = [rng.choice(pos if label else neg)] + [
            rng.choice(["the", "film", "was", "quite", "very"]) for _ in range(3)
        ]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": "positive" if label else "negative"})
    path = tmp_path_factory.mktemp("data") / "sentiment.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)
