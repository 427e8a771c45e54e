"""The learning curve of a train_fraction sweep: the best trial per fraction, written only when it varies."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

from kubetrain.runtime.sweep.learning_curve import points, write


def _row(trial_id, fraction, **metrics):
    return SimpleNamespace(trial_id=trial_id, params={"data.train_fraction": fraction}, metrics=metrics)


TRIALS = [
    _row("a", 0.5, eval_loss=1.2),
    _row("b", 0.5, eval_loss=0.9),
    _row("c", 1.0, eval_loss=0.7),
    _row("d", 0.25, eval_loss=math.nan),  # a diverged trial scores nothing
    _row("e", 0.25),  # a failed one reported nothing
    _row("f", 0.25, eval_loss=1.5),
]


def test_best_trial_per_fraction_smallest_first():
    assert points(TRIALS, "eval_loss", "min") == [
        {"train_fraction": 0.25, "eval_loss": 1.5, "trial": "f", "trials": 1},
        {"train_fraction": 0.5, "eval_loss": 0.9, "trial": "b", "trials": 2},
        {"train_fraction": 1.0, "eval_loss": 0.7, "trial": "c", "trials": 1},
    ]
    assert [p["trial"] for p in points(TRIALS, "eval_loss", "max")] == ["f", "a", "c"]


def test_written_only_when_the_sweep_varies_train_fraction(tmp_path):
    varies = SimpleNamespace(parameters={"data.train_fraction": None}, mode="min")
    paths = write(TRIALS, "eval_loss", varies, str(tmp_path))
    assert sorted(p.rsplit("/", 1)[1] for p in paths) == ["learning_curve.json", "learning_curve.png"]
    saved = json.loads((tmp_path / "learning_curve.json").read_text())
    assert saved["metric"] == "eval_loss" and len(saved["points"]) == 3
    assert (tmp_path / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"
    other = SimpleNamespace(parameters={"training.learning_rate": None}, mode="min")
    assert write(TRIALS, "eval_loss", other, str(tmp_path / "x")) == []
    assert write(TRIALS[:2], "eval_loss", varies, str(tmp_path / "x")) == []  # one fraction is no curve
