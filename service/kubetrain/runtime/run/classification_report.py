"""The classification report, made on the driver from the final model's validation predictions.

Confusion matrix, one-vs-rest precision-recall and ROC curves, a decision threshold for two classes, calibration
(expected calibration error and the reliability bins) and the verdict against the baselines: computed here by
pure functions, drawn by run/classification_plots.py, recorded once into the run's MLflow run and RunResult.
The workers only send numbers (contract.Baselines, contract.Predictions); plots and MLflow stay on the driver,
which already owns the learning curve and every artifact.
"""

from __future__ import annotations

import json
import os

import numpy as np

from .. import contract as ev

BASELINE_NAMES = {"majority": "majority class", "tfidf": "TF-IDF + LR"}
VERDICT_METRIC = (
    "eval_f1"  # binary F1 of the second label, or macro F1 (as classification_metrics computes it)
)
VERDICT_MARGIN = 0.01  # a smaller difference in F1 is a draw
ECE_BINS = 15


def calibration(labels: np.ndarray, probs: np.ndarray, bins: int = ECE_BINS) -> dict:
    """Expected calibration error of the top-label confidence over equal-width bins, and the bins themselves.

    ECE = sum over bins of (share of examples in the bin) * |accuracy in the bin - mean confidence in the bin|.
    """
    confidence, correct = probs.max(1), (probs.argmax(1) == labels).astype(float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)  # bins are (lo, hi]
    table, ece = [], 0.0
    for b in range(bins):
        inside = which == b
        n = int(inside.sum())
        if not n:
            continue
        acc, conf = float(correct[inside].mean()), float(confidence[inside].mean())
        ece += n / len(labels) * abs(acc - conf)
        table.append({"low": float(edges[b]), "high": float(edges[b + 1]), "count": n, "accuracy": acc,
                      "confidence": conf})  # fmt: skip
    return {"ece": ece, "bins": table}


def curves(labels: np.ndarray, probs: np.ndarray, names: list[str]) -> dict:
    """Per class, one-vs-rest (for two classes: the second label only): PR and ROC points, AP and AUC."""
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

    classes = [1] if len(names) == 2 else range(len(names))
    out = {}
    for c in classes:
        truth = labels == c
        if truth.all() or not truth.any():  # undefined one-vs-rest: the class is absent (or alone)
            continue
        precision, recall, pr_t = precision_recall_curve(truth, probs[:, c])
        fpr, tpr, roc_t = roc_curve(truth, probs[:, c])
        out[names[c]] = {
            "average_precision": float(average_precision_score(truth, probs[:, c])),
            "auc": float(roc_auc_score(truth, probs[:, c])),
            "pr": {"precision": precision.tolist(), "recall": recall.tolist(), "thresholds": pr_t.tolist()},
            "roc": {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "thresholds": np.clip(roc_t, 0, 1).tolist()},
        }
    return out


def scores_at(labels: np.ndarray, positive: np.ndarray, threshold: float) -> dict[str, float]:
    """Two classes: metrics when the second label is predicted for probability >= threshold."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, precision_recall_fscore_support

    preds = (positive >= threshold).astype(int)
    p, r, f, _ = precision_recall_fscore_support(labels, preds, average="binary", zero_division=0)
    return {"accuracy": float(accuracy_score(labels, preds)), "precision": float(p), "recall": float(r),
            "f1": float(f), "balanced_accuracy": float(balanced_accuracy_score(labels, preds))}  # fmt: skip


def _grid_scores(labels: np.ndarray, positive: np.ndarray, grid: np.ndarray, metric: str) -> np.ndarray:
    """metric at every threshold of grid at once (counts from sorted probabilities, no loop over thresholds)."""
    truth = labels == 1
    n, pos = len(labels), int(truth.sum())
    predicted = n - np.searchsorted(np.sort(positive), grid, side="left")  # how many p >= t
    tp = pos - np.searchsorted(np.sort(positive[truth]), grid, side="left")
    fp, fn = predicted - tp, pos - tp
    tn = n - pos - fp
    if metric == "f1":
        return np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros(len(grid)), where=(2 * tp + fp + fn) > 0)
    if metric == "accuracy":
        return (tp + tn) / n
    return (tp / max(pos, 1) + tn / max(n - pos, 1)) / 2  # balanced accuracy


def choose_threshold(labels: np.ndarray, positive: np.ndarray, metric: str) -> float:
    """The threshold maximising metric on these predictions, among every predicted probability (and 0.5);
    ties go to the one nearest 0.5 (the argmax rule)."""
    grid = np.unique(np.concatenate([positive, [0.5]]))
    grid = grid[(grid > 0) & (grid < 1)]
    if not len(grid):
        return 0.5
    values = _grid_scores(labels, positive, grid, metric)
    best = np.flatnonzero(values >= values.max() - 1e-12)
    return float(grid[best[np.argmin(np.abs(grid[best] - 0.5))]])


def threshold_report(labels: np.ndarray, probs: np.ndarray, spec) -> dict | None:
    """Two classes with evaluation.threshold set: its value (given or chosen), how, and the metrics at it."""
    if spec is None or probs.shape[1] != 2:
        return None
    positive = probs[:, 1]
    if isinstance(spec, (int, float)):
        value, how = float(spec), "given"
    else:
        value, how = (
            choose_threshold(labels, positive, spec.choose),
            f"chosen on validation for {spec.choose}",
        )
    from sklearn.metrics import confusion_matrix

    cm = confusion_matrix(labels, (positive >= value).astype(int), labels=[0, 1])
    return {"value": value, "how": how, "metrics": scores_at(labels, positive, value),
            "confusion_matrix": cm.tolist()}  # fmt: skip


def verdict(after: dict, baselines: dict[str, dict]) -> tuple[str, float] | None:
    """Is the model worth its cost? One line, and the model's F1 minus the best baseline's."""
    scored = {k: m[VERDICT_METRIC] for k, m in baselines.items() if VERDICT_METRIC in m}
    if VERDICT_METRIC not in after or not scored:
        return None
    best = max(scored, key=scored.get)
    model, base, name = after[VERDICT_METRIC], scored[best], BASELINE_NAMES.get(best, best)
    gap = model - base
    shown = f"F1 {model:.3f} vs {base:.3f} ({gap:+.3f})"
    if gap > VERDICT_MARGIN:
        return f"the model beats the best baseline, {name}: {shown}", gap
    if gap >= -VERDICT_MARGIN:
        return f"the model is no better than {name}, a far cheaper model: {shown}", gap
    return f"{name} beats the model: {shown}; a far cheaper model does better", gap


def build(e: ev.Predictions, threshold_spec, baselines: dict) -> dict:
    """Every number of the report, JSON-ready."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    labels, probs, names = np.asarray(e.labels), np.asarray(e.probs, dtype=float), e.label_names
    classes = list(range(len(names)))
    preds = probs.argmax(1)
    p, r, f, s = precision_recall_fscore_support(labels, preds, labels=classes, zero_division=0)
    return {
        "step": e.step, "examples": len(labels), "label_names": names, "positive_label": names[1] if len(names) == 2 else None,
        "confusion_matrix": confusion_matrix(labels, preds, labels=classes).tolist(),
        "per_class": {n: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
                      for i, n in enumerate(names)},
        "curves": curves(labels, probs, names),
        "calibration": calibration(labels, probs),
        "threshold": threshold_report(labels, probs, threshold_spec),
        "baselines": baselines,
    }  # fmt: skip


def record_baselines(e: ev.Baselines, result, tracker, console) -> None:
    """The baselines into the result, MLflow (baseline_<name>_eval_*, step 0) and one console line."""
    result.baselines = dict(e.metrics)
    tracker.log_metrics({f"baseline_{name}_{k}": v for name, m in e.metrics.items() for k, v in m.items()}, 0)
    console.say("Baselines on the same splits: " + "; ".join(
        f"{BASELINE_NAMES.get(n, n)} F1 {m.get('eval_f1', float('nan')):.3f}, accuracy "
        f"{m.get('eval_accuracy', float('nan')):.3f}" for n, m in e.metrics.items()))  # fmt: skip


def record_predictions(e: ev.Predictions, result, tracker, threshold_spec) -> None:
    """The report of the final predictions: JSON + PNGs under <run>/classification, MLflow metrics and tags."""
    from .classification_plots import draw_all

    if not e.labels:
        return
    report = build(e, threshold_spec, result.baselines)
    out = os.path.join(result.run_dir, "classification")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(report, f, indent=1)
    draw_all(report, out)
    metrics = {"eval_ece": report["calibration"]["ece"]}
    t = report["threshold"]
    if t:
        metrics["eval_threshold"] = t["value"]
        metrics.update({f"eval_{k}_at_threshold": v for k, v in t["metrics"].items()})
    said = verdict(result.after, result.baselines)
    if said:
        report["verdict"] = said[0]
        metrics["eval_f1_minus_best_baseline"] = said[1]
        tracker.set_tags({"kubetrain.baseline_verdict": said[0]})
    tracker.log_metrics(metrics, e.step)
    tracker.log_artifacts(out, "classification")
    result.after["eval_ece"] = metrics["eval_ece"]
    result.classification = report


def summary_lines(result) -> list[str]:
    """What the console summary adds for a classifier: the verdict, the threshold, calibration, the artifacts."""
    report = getattr(result, "classification", None)
    if not report:
        return []
    lines = [f"Baselines: {report['verdict']}"] if report.get("verdict") else []
    t = report.get("threshold")
    if t:
        m = t["metrics"]
        lines.append(
            f"Threshold {t['value']:.3f} ({t['how']}) on P({report['positive_label']}): F1 {m['f1']:.3f}, "
            f"precision {m['precision']:.3f}, recall {m['recall']:.3f}, accuracy {m['accuracy']:.3f}"
        )
    lines.append(
        f"Calibration: expected calibration error {report['calibration']['ece']:.4f} ({ECE_BINS} bins)"
    )
    lines.append(
        f"Confusion matrix, PR/ROC curves, reliability diagram: {os.path.join(result.run_dir, 'classification')}"
    )
    return lines
