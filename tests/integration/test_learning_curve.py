"""A sweep over data.train_fraction of an imbalanced classification job trained with balanced class weights:
each trial logs its resolved weights, the parent run gets the learning curve (PNG + JSON)."""

from __future__ import annotations

import json
import pathlib
import random

import pytest

pytestmark = pytest.mark.ray


def _imbalanced(path: pathlib.Path) -> str:
    """160 records, 3 'no' to 1 'yes', learnable from one word."""
    rng = random.Random(5)
    rows = []
    for i in range(160):
        label = "yes" if i % 4 == 0 else "no"
        word = rng.choice(["great", "superb"] if label == "yes" else ["bad", "poor"])
        rows.append({"text": " ".join([word, *rng.choices(["the", "film", "was"], k=3)]), "label": label})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def imbalanced_job(tiny_job, tmp_path: pathlib.Path, name: str, class_weights, **changes):
    """A tiny classifier on _imbalanced data (a quarter held out, stratified) trained 4 steps with class_weights."""
    training = {
        "max_steps": 4,
        "batch_size": 8,
        "learning_rate": 0.01,
        "seed": 1,
        "class_weights": class_weights,
    }
    return tiny_job(
        name,
        spec__task="sequence_classification",
        spec__data={
            "train": _imbalanced(tmp_path / "d.jsonl"),
            "format": "classification",
            "validation_split": 0.25,
            "max_length": 16,
        },
        spec__peft={"type": "none"},
        spec__training={**training, **changes.pop("training", {})},
        **changes,
    )


def test_train_fraction_sweep_with_class_weights_logs_a_learning_curve(ray_session, tiny_job, tmp_path):
    from mlflow.tracking import MlflowClient

    from kubetrain.runtime.sweep.driver import run_sweep

    job = imbalanced_job(
        tiny_job,
        tmp_path,
        "curve",
        "balanced",
        training={"eval_every": 2},
        spec__resources={"workers": 1, "cpus_per_worker": 0.5},
        spec__sweep={
            "algorithm": "grid",
            "metric": "eval_f1",
            "mode": "max",
            "max_concurrent": 1,
            "parameters": {"data.train_fraction": {"type": "grid", "values": [0.25, 1.0]}},
        },
    )
    result = run_sweep(job, local_root=str(tmp_path / "root"), show=False)
    assert result.succeeded, result.error
    assert sorted(t.params["data.train_fraction"] for t in result.trials) == [0.25, 1.0]

    client = MlflowClient(result.tracking_uri)
    for trial in result.trials:  # 120 training records, 90 'no' and 30 'yes' (stratified); a quarter: 30
        params = client.get_run(trial.mlflow_run_id).data.params
        fraction = trial.params["data.train_fraction"]
        assert params["spec.data.train_fraction"] == str(fraction)
        n = 120 * fraction
        weights = {k: float(params[f"class_weight.{k}"]) for k in ("no", "yes")}
        counts = {k: n / (2 * w) for k, w in weights.items()}  # balanced: w = n / (classes x count)
        assert sum(counts.values()) == pytest.approx(n)
        assert counts["no"] == pytest.approx(3 * counts["yes"], rel=0.35)  # stratified: still about 3 to 1
        if fraction == 1.0:
            assert weights == {"no": pytest.approx(2 / 3, rel=1e-5), "yes": 2.0}

    names = {a.path for a in client.list_artifacts(result.parent_run_id, "plots")}
    assert {"plots/learning_curve.png", "plots/learning_curve.json"} <= names
    local = client.download_artifacts(result.parent_run_id, "plots/learning_curve.json", str(tmp_path))
    curve = json.loads(pathlib.Path(local).read_text())
    assert curve["metric"] == "eval_f1" and [p["train_fraction"] for p in curve["points"]] == [0.25, 1.0]
    by_trial = {t.trial_id: t.metrics["eval_f1"] for t in result.trials}
    assert all(p["eval_f1"] == pytest.approx(by_trial[p["trial"]]) for p in curve["points"])
