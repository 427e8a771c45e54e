"""The classification report's pictures: confusion matrix, PR and ROC curves, reliability diagram (PNG)."""

from __future__ import annotations

import os


def _pyplot():
    """matplotlib without a display (as the learning curve and the sweep plots draw)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str) -> str:
    fig.tight_layout()
    fig.savefig(path)
    _pyplot().close(fig)
    return path


def confusion_matrix(report: dict, path: str) -> str:
    import numpy as np
    from sklearn.metrics import ConfusionMatrixDisplay

    names = report["label_names"]
    fig, ax = _pyplot().subplots(
        figsize=(max(4, 0.7 * len(names) + 3), max(3.5, 0.7 * len(names) + 2.5)), dpi=100
    )
    ConfusionMatrixDisplay(np.asarray(report["confusion_matrix"]), display_labels=names).plot(
        ax=ax, colorbar=False, values_format="d"
    )
    ax.set_title(f"validation, argmax ({report['examples']} examples)")
    return _save(fig, path)


def pr_curves(report: dict, path: str) -> str:
    fig, ax = _pyplot().subplots(figsize=(5.5, 4.5), dpi=100)
    for name, c in report["curves"].items():
        ax.step(c["pr"]["recall"], c["pr"]["precision"], where="post",
                label=f"{name} (AP {c['average_precision']:.3f})")  # fmt: skip
    t = report.get("threshold")
    if t:
        ax.plot(t["metrics"]["recall"], t["metrics"]["precision"], "o", color="black",
                label=f"threshold {t['value']:.3f}")  # fmt: skip
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.01)
    ax.set_ylim(0, 1.01)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize="small")
    ax.set_title("precision-recall" + (" (one vs rest)" if len(report["label_names"]) > 2 else ""))
    return _save(fig, path)


def roc_curves(report: dict, path: str) -> str:
    fig, ax = _pyplot().subplots(figsize=(5.5, 4.5), dpi=100)
    for name, c in report["curves"].items():
        ax.plot(c["roc"]["fpr"], c["roc"]["tpr"], label=f"{name} (AUC {c['auc']:.3f})")
    ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=1, label="chance")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    ax.set_title("ROC" + (" (one vs rest)" if len(report["label_names"]) > 2 else ""))
    return _save(fig, path)


def reliability(report: dict, path: str) -> str:
    """Accuracy against confidence per bin (top label), with how many examples each bin holds."""
    cal = report["calibration"]
    fig, (ax, hist) = _pyplot().subplots(2, 1, figsize=(5, 6), dpi=100, sharex=True,
                                         gridspec_kw={"height_ratios": [3, 1]})  # fmt: skip
    bins = cal["bins"]
    mids = [(b["low"] + b["high"]) / 2 for b in bins]
    width = bins[0]["high"] - bins[0]["low"] if bins else 0.1
    ax.bar(mids, [b["accuracy"] for b in bins], width=width * 0.9, alpha=0.7, label="accuracy")
    ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o", color="black",
            label="mean confidence")  # fmt: skip
    ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=1, label="perfectly calibrated")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.01)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize="small")
    ax.set_title(f"reliability (ECE {cal['ece']:.4f})")
    hist.bar(mids, [b["count"] for b in bins], width=width * 0.9)
    hist.set_xlabel("confidence of the predicted label")
    hist.set_ylabel("examples")
    hist.set_xlim(0, 1)
    return _save(fig, path)


def draw_all(report: dict, out_dir: str) -> list[str]:
    """Every plot of the report into out_dir; the paths written."""
    drawn = [
        confusion_matrix(report, os.path.join(out_dir, "confusion_matrix.png")),
        reliability(report, os.path.join(out_dir, "reliability.png")),
    ]
    if report["curves"]:
        drawn.append(pr_curves(report, os.path.join(out_dir, "precision_recall.png")))
        drawn.append(roc_curves(report, os.path.join(out_dir, "roc.png")))
    return drawn
