"""Classification practice as pure functions: calibration, threshold, curves, baselines, the verdict, the spec."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kubetrain.runtime import contract as ev
from kubetrain.runtime.run import classification_report as cr
from kubetrain.runtime.train.baselines import baselines_event, score_baselines
from kubetrain.runtime.train.data import Splits
from kubetrain.runtime.train.evaluate import classification_metrics


def _binary(p1: list[float]) -> np.ndarray:
    return np.array([[1 - p, p] for p in p1])


def test_ece_is_the_weighted_gap_between_accuracy_and_confidence():
    # two bins: 0.9-confident (4 of 5 right: accuracy 0.8), 0.6-confident (3 of 5 right: 0.6)
    probs = _binary([0.9] * 5 + [0.6] * 5)
    labels = np.array([1, 1, 1, 1, 0] + [1, 1, 1, 0, 0])
    cal = cr.calibration(labels, probs, bins=10)
    assert cal["ece"] == pytest.approx(0.5 * abs(0.8 - 0.9) + 0.5 * abs(0.6 - 0.6))
    assert [b["count"] for b in cal["bins"]] == [5, 5]
    assert cal["bins"][0]["high"] == pytest.approx(0.6)  # 0.6 falls in (0.5, 0.6]


def test_ece_uses_the_top_label_and_is_zero_when_confidence_matches_accuracy():
    probs = np.array([[0.5, 0.5, 0.0]] * 4 + [[0.0, 0.0, 1.0]] * 2)
    labels = np.array([0, 1, 0, 1, 2, 2])  # argmax ties go to class 0: right half the time at confidence 0.5
    assert cr.calibration(labels, probs)["ece"] == pytest.approx(0.0)


def test_chosen_threshold_maximises_the_metric_and_a_given_one_is_kept():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 0])
    positive = np.array([0.05, 0.1, 0.15, 0.2, 0.3, 0.35, 0.4, 0.25])  # all below 0.5: argmax finds nothing
    assert cr.scores_at(labels, positive, 0.5)["f1"] == 0.0
    t = cr.choose_threshold(labels, positive, "f1")
    assert 0.25 < t <= 0.3 and cr.scores_at(labels, positive, t)["f1"] == pytest.approx(1.0)
    from kubetrain.spec.evaluation import ChooseThreshold

    chosen = cr.threshold_report(labels, _binary(positive.tolist()), ChooseThreshold(choose="accuracy"))
    assert chosen["how"] == "chosen on validation for accuracy" and chosen["metrics"]["accuracy"] == 1.0
    assert chosen["confusion_matrix"] == [[5, 0], [0, 3]]
    given = cr.threshold_report(labels, _binary(positive.tolist()), 0.4)
    assert (
        given["value"] == 0.4
        and given["how"] == "given"
        and given["metrics"]["recall"] == pytest.approx(1 / 3)
    )
    assert cr.threshold_report(np.array([0, 1, 2]), np.eye(3), 0.4) is None  # multi-class: no threshold


def test_curves_one_vs_rest_per_class_and_the_positive_class_only_for_two():
    names = ["a", "b", "c"]
    labels = np.array([0, 1, 2, 0, 1, 0])
    probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.3, 0.6], [0.5, 0.4, 0.1], [0.6, 0.3, 0.1],
                      [0.3, 0.3, 0.4]])  # fmt: skip
    got = cr.curves(labels, probs, names)
    assert set(got) == {"a", "b", "c"} and got["c"]["auc"] == pytest.approx(1.0)
    assert got["a"]["pr"]["recall"][-1] == 0.0 and got["a"]["roc"]["fpr"][0] == 0.0
    # a class absent from validation has no one-vs-rest curve (undefined), the others still do
    assert set(cr.curves(np.array([0, 1, 0, 1]), probs[:4], names)) == {"a", "b"}
    assert set(cr.curves(np.array([0, 1, 1]), _binary([0.2, 0.9, 0.4]), ["neg", "pos"])) == {"pos"}


def test_baselines_fit_on_train_and_score_like_the_model():
    rng = np.random.default_rng(0)
    words = {0: ["good", "great", "fine"], 1: ["bad", "awful", "poor"]}
    labels = [0] * 30 + [1] * 10  # imbalanced: the majority class is 0
    texts = [f"{rng.choice(words[y])} film {rng.choice(['very', 'quite'])}" for y in labels]
    got = score_baselines(
        texts[:30:2] + texts[30::2], labels[:30:2] + labels[30::2], texts, labels, 2, seed=1
    )
    assert got["majority"] == classification_metrics(
        labels, [[0.75, 0.25]] * 40
    )  # priors of the training split
    assert got["majority"]["eval_f1"] == 0.0 and got["majority"]["eval_auc"] == 0.5
    assert got["tfidf"]["eval_auc"] > 0.95 and got["tfidf"]["eval_f1"] > got["majority"]["eval_f1"]
    # a class missing from the training split: its probability column is zero, the others stay in place
    three = score_baselines(["x a", "y b"], [0, 2], ["x a", "y b", "z"], [0, 2, 1], 3, seed=1)
    assert set(three) == {"majority", "tfidf"} and "eval_auc" in three["tfidf"]


def test_baselines_event_uses_the_splits_label_order():
    import datasets

    train = datasets.Dataset.from_list(
        [{"t": f"w{i % 2} x", "y": "pos" if i % 2 else "neg"} for i in range(20)]
    )
    val = datasets.Dataset.from_list([{"t": "w1 x", "y": "pos"}, {"t": "w0 x", "y": "neg"}])
    event = baselines_event(Splits(train, val, ["neg", "pos"]), "t", "y", seed=0)
    assert event.metrics["tfidf"]["eval_accuracy"] == 1.0
    assert baselines_event(Splits(train, None, ["neg", "pos"]), "t", "y", seed=0) is None


@pytest.mark.parametrize(
    ("model_f1", "starts"),
    [(0.95, "the model beats the best baseline, TF-IDF + LR"), (0.885, "the model is no better than TF-IDF + LR"),
     (0.5, "TF-IDF + LR beats the model")],
)  # fmt: skip
def test_verdict_against_the_best_baseline(model_f1, starts):
    said, gap = cr.verdict({"eval_f1": model_f1}, {"majority": {"eval_f1": 0.0}, "tfidf": {"eval_f1": 0.88}})
    assert said.startswith(starts) and gap == pytest.approx(model_f1 - 0.88)
    assert cr.verdict({}, {"tfidf": {"eval_f1": 0.88}}) is None


class _Tracker:
    """Records what the report logs (the real Tracker is tested against MLflow in the integration test)."""

    def __init__(self):
        self.metrics, self.tags, self.artifacts = {}, {}, []

    def log_metrics(self, metrics, step):
        self.metrics.update(metrics)

    def set_tags(self, tags):
        self.tags.update(tags)

    def log_artifacts(self, local_dir, artifact_path=None):
        self.artifacts.append((local_dir, artifact_path))


def test_report_writes_json_and_pngs_and_logs_metrics(tmp_path):
    from kubetrain.runtime.run.progress import RunResult
    from kubetrain.spec.evaluation import ChooseThreshold

    result = RunResult("j", True, str(tmp_path), after={"eval_f1": 0.9})
    result.baselines = {"majority": {"eval_f1": 0.0}, "tfidf": {"eval_f1": 0.8}}
    rng = np.random.default_rng(1)
    labels = (rng.random(60) < 0.3).astype(int)
    p1 = np.clip(labels * 0.5 + rng.random(60) * 0.5, 0.01, 0.99)
    event = ev.Predictions(
        step=5, label_names=["keep", "leave"], labels=labels.tolist(), probs=_binary(p1).tolist()
    )
    tracker = _Tracker()
    cr.record_predictions(event, result, tracker, ChooseThreshold(choose="f1"))
    out = tmp_path / "classification"
    assert {p.name for p in out.iterdir()} == {"report.json", "confusion_matrix.png", "reliability.png",
                                               "precision_recall.png", "roc.png"}  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    assert np.array(report["confusion_matrix"]).sum() == 60 and report["positive_label"] == "leave"
    assert (
        tracker.metrics["eval_ece"] == pytest.approx(report["calibration"]["ece"]) == result.after["eval_ece"]
    )
    assert tracker.metrics["eval_threshold"] == report["threshold"]["value"]
    assert tracker.metrics["eval_f1_at_threshold"] >= cr.scores_at(labels, p1, 0.5)["f1"]
    assert tracker.metrics["eval_f1_minus_best_baseline"] == pytest.approx(0.1)
    assert tracker.tags["kubetrain.baseline_verdict"].startswith("the model beats")
    assert tracker.artifacts == [(str(out), "classification")]
    lines = cr.summary_lines(result)
    assert lines[0].startswith("Baselines: the model beats") and lines[1].startswith("Threshold ")


@pytest.mark.parametrize(
    ("threshold", "task", "error"),
    [
        (1.0, "sequence_classification", "must be a number between 0 and 1"),
        ({"choose": "auc"}, "sequence_classification", "{choose: f1 | accuracy | balanced_accuracy}"),
        (0.3, "causal_lm", "evaluation.threshold needs task sequence_classification"),
    ],
)
def test_threshold_spec_errors_name_the_field_and_what_is_allowed(minimal, threshold, task, error):
    from kubetrain.spec import validate_job

    minimal["spec"]["task"] = task
    minimal["spec"]["data"]["format"] = "classification" if task != "causal_lm" else "instruction"
    minimal["spec"]["evaluation"] = {"threshold": threshold}
    with pytest.raises(Exception) as info:
        validate_job(minimal)
    assert error in str(info.value)
    assert "evaluation.threshold" in str(info.value)


def test_threshold_spec_accepts_a_number_or_a_metric(minimal):
    from kubetrain.spec import validate_job
    from kubetrain.spec.evaluation import ChooseThreshold

    minimal["spec"].update(task="sequence_classification", evaluation={"threshold": 0.3})
    minimal["spec"]["data"]["format"] = "classification"
    assert validate_job(minimal).spec.evaluation.threshold == 0.3
    minimal["spec"]["evaluation"]["threshold"] = {"choose": "balanced_accuracy"}
    assert validate_job(minimal).spec.evaluation.threshold == ChooseThreshold(choose="balanced_accuracy")


@pytest.mark.parametrize("metric", ["f1", "accuracy", "balanced_accuracy"])
def test_threshold_grid_counts_agree_with_sklearn(metric):
    rng = np.random.default_rng(2)
    labels = (rng.random(200) < 0.25).astype(int)
    positive = np.round(np.clip(labels * 0.3 + rng.random(200) * 0.7, 0.001, 0.999), 2)  # ties included
    grid = np.unique(positive)
    fast = cr._grid_scores(labels, positive, grid, metric)
    slow = [cr.scores_at(labels, positive, t)[metric] for t in grid]
    np.testing.assert_allclose(fast, slow)
    t = cr.choose_threshold(labels, positive, metric)
    assert cr.scores_at(labels, positive, t)[metric] == pytest.approx(max(slow))
