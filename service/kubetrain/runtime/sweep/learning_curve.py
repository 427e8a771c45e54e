"""The learning curve of a sweep that varies data.train_fraction: is more data worth collecting?

For each fraction, the best validation metric among its trials (other parameters may vary too), as
learning_curve.json and learning_curve.png beside the sweep's other plots (its MLflow parent run).
"""

from __future__ import annotations

import json
import math
import os

PARAM = "data.train_fraction"


def points(trials: list, metric: str, mode: str) -> list[dict]:
    """One point per fraction, smallest first: its best trial's metric, which trial, how many were scored."""
    by_fraction: dict[float, list] = {}
    for row in trials:
        value, fraction = row.metrics.get(metric), row.params.get(PARAM)
        if isinstance(fraction, (int, float)) and isinstance(value, (int, float)) and math.isfinite(value):
            by_fraction.setdefault(float(fraction), []).append(row)
    pick = min if mode == "min" else max
    out = []
    for fraction in sorted(by_fraction):
        rows = by_fraction[fraction]
        best = pick(rows, key=lambda r: r.metrics[metric])
        out.append(
            {
                "train_fraction": fraction,
                metric: best.metrics[metric],
                "trial": best.trial_id,
                "trials": len(rows),
            }
        )
    return out


def write(trials: list, metric: str, sweep, out_dir: str) -> list[str]:
    """learning_curve.json and .png in out_dir when the sweep varies train_fraction over 2+ scored values."""
    if PARAM not in sweep.parameters:
        return []
    pts = points(trials, metric, sweep.mode)
    if len(pts) < 2:
        return []
    data = {"parameter": PARAM, "metric": metric, "mode": sweep.mode, "points": pts}
    json_path = os.path.join(out_dir, "learning_curve.json")
    with open(json_path, "w") as f:
        json.dump(data, f, indent=2)
    return [json_path, _plot(pts, metric, os.path.join(out_dir, "learning_curve.png"))]


def _plot(pts: list[dict], metric: str, path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot([p["train_fraction"] for p in pts], [p[metric] for p in pts], "-o")
    ax.set_xlabel("fraction of the training split (data.train_fraction)")
    ax.set_ylabel(f"{metric} (best trial per fraction)")
    ax.set_title("learning curve")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
