"""Classification practice end to end on a tiny model: baselines, the final report's artifacts, read back from MLflow."""

from __future__ import annotations

import json
import pathlib
import random

import numpy as np
import pytest

pytestmark = pytest.mark.ray


def run(job, **kw):
    from kubetrain.runtime.run.job import run_job

    return run_job(
        job, local_root=str(pathlib.Path(job.spec.checkpoint.storage).parent / "root"), show=False, **kw
    )


def _write(path: pathlib.Path, classes: list[str], shares: list[float], n: int) -> str:
    """Imbalanced, learnable, not clean: each class has its own words, 10% of labels are flipped."""
    rng = random.Random(5)
    words = {c: [f"{c}{i}" for i in range(3)] for c in classes}
    rows = []
    for _ in range(n):
        c = rng.choices(classes, shares)[0]
        text = " ".join([rng.choice(words[c]), *rng.choices(["the", "a", "was", "very"], k=3)])
        label = c if rng.random() > 0.1 else rng.choice(classes)
        rows.append({"text": text, "label": label})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _job(tiny_job, name: str, train: str, **overrides):
    return tiny_job(
        name,
        spec__task="sequence_classification",
        spec__data={"train": train, "format": "classification", "validation_split": 0.25, "max_length": 16},
        spec__peft={"type": "none"},
        spec__training={"max_steps": 10, "batch_size": 8, "learning_rate": 0.01, "eval_every": 5, "seed": 1},
        **overrides,
    )


def test_two_workers_baselines_threshold_curves_calibration_in_mlflow(ray_session, tiny_job, tmp_path):
    from mlflow.tracking import MlflowClient

    train = _write(tmp_path / "binary.jsonl", ["no", "yes"], [0.7, 0.3], 160)
    result = run(_job(tiny_job, "cls-report", train, spec__evaluation={"threshold": {"choose": "f1"}}))
    assert result.succeeded, result.error

    client = MlflowClient(result.tracking_uri)
    data = client.get_run(result.mlflow_run_id).data
    for name in ("majority", "tfidf"):
        assert data.metrics[f"baseline_{name}_eval_f1"] == pytest.approx(result.baselines[name]["eval_f1"])
    assert data.metrics["baseline_majority_eval_auc"] == 0.5
    assert (
        0.0 <= data.metrics["eval_ece"] <= 1.0 and data.metrics["final_eval_ece"] == data.metrics["eval_ece"]
    )
    assert 0.0 < data.metrics["eval_threshold"] < 1.0
    assert data.metrics["eval_f1_at_threshold"] >= data.metrics["final_eval_f1"] - 1e-9  # chosen for F1 here
    assert data.tags["kubetrain.baseline_verdict"]
    shown = {
        pathlib.PurePosixPath(a.path).name
        for a in client.list_artifacts(result.mlflow_run_id, "classification")
    }
    assert shown == {
        "report.json",
        "confusion_matrix.png",
        "precision_recall.png",
        "roc.png",
        "reliability.png",
    }

    local = client.download_artifacts(result.mlflow_run_id, "classification/report.json", str(tmp_path))
    report = json.loads(pathlib.Path(local).read_text())
    cm = np.array(report["confusion_matrix"])
    # the final model's predictions on the whole validation split, the ones its last evaluation scored
    assert cm.sum() == result.validation_examples == 40
    assert np.trace(cm) / cm.sum() == pytest.approx(result.after["eval_accuracy"])
    # the baselines were scored on that same split: the majority class's accuracy is its share there
    assert result.baselines["majority"]["eval_accuracy"] == pytest.approx(cm.sum(1).max() / 40)
    assert list(report["curves"]) == ["yes"] and report["threshold"]["how"] == "chosen on validation for f1"


def test_one_worker_three_classes_full_final_pass_despite_eval_batches(tiny_job, tmp_path):
    train = _write(tmp_path / "three.jsonl", ["ant", "bee", "cat"], [0.6, 0.3, 0.1], 160)
    job = _job(tiny_job, "cls-three", train, spec__resources__workers=1, spec__training__eval_batches=1)
    result = run(job, in_process=True)
    assert result.succeeded, result.error
    report = result.classification
    assert np.array(report["confusion_matrix"]).sum() == 40  # eval_batches saw 8; the report all of them
    assert set(report["curves"]) == {"ant", "bee", "cat"} and report["threshold"] is None
    assert set(report["baselines"]) == {"majority", "tfidf"}
    out = pathlib.Path(result.run_dir) / "classification"
    assert {"precision_recall.png", "roc.png", "reliability.png"} <= {p.name for p in out.iterdir()}
