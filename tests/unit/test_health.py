"""Training health (train/health.py, run/diagnosis.py): the NaN stop's decision and text, the warning detectors."""

from __future__ import annotations

import copy
import math
import random

import pytest
import torch

from kubetrain.control.status import status_from_rayjob
from kubetrain.runtime import contract as ev
from kubetrain.runtime.run import diagnosis, status_reporter
from kubetrain.runtime.train import health
from kubetrain.spec import SpecError, validate_job
from tests.conftest import MINIMAL

NAN, INF = math.nan, math.inf


@pytest.mark.parametrize(
    "loss, norm, kind",
    [
        (2.3, 1.0, None),
        (2.3, None, None),  # no grad norm known (ZeRO keeps gradients elsewhere): the loss alone
        (NAN, 1.0, health.NAN_LOSS),
        (INF, NAN, health.INF_LOSS),  # the loss is named first: it is the cause
        (-INF, 1.0, health.INF_LOSS),
        (2.3, NAN, health.NAN_GRAD),
        (2.3, INF, health.INF_GRAD),
    ],
)
def test_nonfinite_names_what_went_bad(loss, norm, kind):
    assert health.nonfinite(loss, norm) == kind


def test_grad_norm_sees_a_nan_gradient_and_agree_keeps_it_without_a_process_group():
    layer = torch.nn.Linear(3, 2)
    assert health.grad_norm(layer.parameters()) is None  # no gradients yet
    layer(torch.ones(1, 3)).sum().backward()
    assert math.isfinite(health.grad_norm(layer.parameters()))
    layer.weight.grad[0, 0] = math.nan
    kind = health.nonfinite(1.0, health.grad_norm(layer.parameters()))
    assert kind == health.NAN_GRAD and health.agree(kind) == kind and health.agree(None) is None


def test_injected_nan_hits_only_the_last_rank_at_its_step(monkeypatch):
    monkeypatch.setenv("KUBETRAIN_NAN_AT_STEP", "5")
    assert (
        health.injected_nan(5, 1, 2) and not health.injected_nan(5, 0, 2) and not health.injected_nan(4, 1, 2)
    )
    monkeypatch.delenv("KUBETRAIN_NAN_AT_STEP")
    assert not health.injected_nan(5, 1, 2)


def _curve(seed: int, n: int = 400, noise: str = "gauss") -> list[float]:
    """A normal training curve: decaying loss with batch noise (Gaussian, or heavy-tailed per-batch noise)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        base = 0.3 + 2.5 * math.exp(-i / 60)
        factor = rng.gauss(1, 0.1) if noise == "gauss" else rng.lognormvariate(0, 0.35)
        out.append(base * max(factor, 0.05))
    return out


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("noise", ["gauss", "lognormal"])
def test_no_divergence_alarm_on_a_normal_noisy_curve(seed, noise):
    d = health.DivergenceDetector()
    assert not [s for i, v in enumerate(_curve(seed, noise=noise)) if (s := d.add(i, v))]


def test_a_loss_spike_is_flagged_with_its_evidence():
    d = health.DivergenceDetector(factor=10, window=20)
    curve = _curve(1)
    for i, v in enumerate(curve[:100]):
        assert d.add(i, v) is None
    spike = d.add(100, 25.0)
    assert spike is not None and spike.step == 100 and spike.loss == 25.0
    assert spike.first_step == 80 and spike.last_step == 99 and 0.3 < spike.median < 1.0
    assert "loss 25 at step 100" in spike.text() and "steps 80-99" in spike.text()
    assert d.add(101, NAN) is None  # a NaN stops the run; it is not a spike


def test_a_blow_up_is_flagged_but_not_a_flat_curve_with_tiny_bumps():
    d = health.DivergenceDetector()
    found = [s for i in range(40) if (s := d.add(i, 1.0 if i < 30 else 1.0 * 3 ** (i - 29)))]
    assert found and found[0].step == 30
    flat = health.DivergenceDetector()  # MAD 0: the 5%-of-median floor and the 2x guard keep it quiet
    assert not [s for i in range(40) if (s := flat.add(i, 1.0 + (0.3 if i % 10 == 9 else 0.0)))]


def _overfit(evals, trains, patience=3):
    d, found = health.OverfittingDetector(patience), []
    for step, (e, t) in enumerate(zip(evals, trains), start=1):
        for x in t:
            d.add_train(x)
        found.append(d.add_eval(step * 10, e))
    return [f for f in found if f]


def test_overfitting_needs_patience_rises_while_training_loss_falls():
    falling = [[2.0 - 0.2 * i, 1.9 - 0.2 * i] for i in range(6)]
    found = _overfit([1.5, 1.2, 1.0, 1.05, 1.1, 1.2], falling)
    assert len(found) == 1  # flagged once, when the pattern is complete
    f = found[0]
    assert (
        f.steps == [30, 40, 50, 60]
        and f.eval_loss == [1.0, 1.05, 1.1, 1.2]
        and f.train_loss[-1] < f.train_loss[0]
    )
    assert "validation loss rose 1 -> 1.05 -> 1.1 -> 1.2 at steps 30, 40, 50, 60" in f.text()


@pytest.mark.parametrize(
    "evals, trains",
    [
        ([1.5, 1.2, 1.0, 1.05, 1.1, 1.0], [[1.0]] * 6),  # two rises, then a fall: noise
        ([1.0, 1.1, 1.2, 1.3], [[1.0], [1.1], [1.2], [1.3]]),  # both rise: diverging, not overfitting
        ([1.0, 0.9, 0.8, 0.7, 0.6], [[1.0], [0.9], [0.8], [0.7], [0.6]]),  # a healthy run
        ([1.0, 1.1, 1.2, 1.3], [[], [], [], []]),  # no training loss logged: no evidence
    ],
)
def test_no_overfitting_alarm(evals, trains):
    assert _overfit(evals, trains) == []


def _job(**training):
    body = copy.deepcopy(MINIMAL)
    body["spec"].setdefault("training", {}).update(training)
    return validate_job(body)


def test_the_stop_diagnosis_names_step_lr_checkpoint_and_what_to_try():
    job = _job(learning_rate=0.3, precision="bf16", max_grad_norm=None)
    e = ev.Unhealthy(step=7, kind=health.NAN_LOSS, loss=NAN, grad_norm=None, learning_rate=0.25)
    text = diagnosis.stop_text(e, job.spec, (6, "/runs/x/checkpoint_00000006"))
    assert "training stopped at step 7: the training loss was NaN (learning rate 0.25 then)" in text
    assert "the last good checkpoint is step 6 (/runs/x/checkpoint_00000006)" in text
    for tip in ("spec.training.learning_rate (now 0.3", "max_grad_norm: 1.0", "precision: fp32 (now bf16)"):
        assert tip in text
    calm = diagnosis.stop_text(e, _job(max_grad_norm=1.0, precision="fp32").spec, None)
    assert (
        "no checkpoint was written before it" in calm and "max_grad_norm" not in calm and "fp32" not in calm
    )


def test_diagnosis_tags_and_status(tmp_path):
    job = _job(health={"overfitting_patience": 1}).model_copy(deep=True)
    job.spec.checkpoint.storage = str(tmp_path)
    d = diagnosis.Diagnosis(job)
    assert d.tags() == {"kubetrain.health": "ok"} and d.status() is None
    d.on_step(ev.Stepped(step=1, metrics={"train_loss": 2.0}))
    d.on_eval(ev.Evaluated(step=1, tag="periodic", metrics={"eval_loss": 1.0}))
    d.on_step(ev.Stepped(step=2, metrics={"train_loss": 1.0}))
    assert d.on_eval(ev.Evaluated(step=2, tag="periodic", metrics={"eval_loss": 1.2})) == "overfitting"
    assert "spec.training.early_stopping" in d.warnings["overfitting"]
    assert d.tags()["kubetrain.health"] == "warning"
    d.on_unhealthy(ev.Unhealthy(step=3, kind=health.INF_GRAD, loss=1.0, grad_norm=INF, learning_rate=1e-3))
    assert "no checkpoint was written before it" in d.conclude()
    tags = d.tags()
    assert tags["kubetrain.health"] == "inf_grad_norm" and tags["kubetrain.diagnosis"].startswith(
        "training stopped"
    )
    assert tags["kubetrain.warning.overfitting"]
    status = d.status()
    assert status["reason"] == "InfiniteGradient" and status["message"] == d.error and status["warnings"]


def test_status_reporter_puts_health_beside_progress_and_the_operator_uses_it_on_failure():
    health_status = {"reason": "NaNLoss", "message": "training stopped at step 7: ..."}
    out = status_reporter._status({"step": 7, "metrics": {"train_loss": 1.0}, "health": health_status})
    assert out["health"] == health_status and "health" not in out["progress"]
    assert "health" not in status_reporter._status({"step": 7, "health": None})
    body = copy.deepcopy(MINIMAL)
    body["metadata"].update(namespace="ns", uid="u-1", generation=1)
    body["status"] = {"phase": "Running", "health": health_status}
    failed = {
        "metadata": {"name": "t"},
        "spec": {},
        "status": {"jobDeploymentStatus": "Failed", "message": "exit 2"},
    }
    status = status_from_rayjob(body, failed, "2026-01-01T00:00:00Z")
    assert (
        status["phase"] == "Failed"
        and status["reason"] == "NaNLoss"
        and status["message"] == health_status["message"]
    )
    running = {"metadata": {"name": "t"}, "spec": {}, "status": {"jobDeploymentStatus": "Running"}}
    assert status_from_rayjob(body, running, "2026-01-01T00:00:00Z")["reason"] == "Running"


def test_health_spec_defaults_and_errors():
    h = _job().spec.training.health
    assert (h.divergence_factor, h.divergence_window, h.overfitting_patience) == (10.0, 20, 3)
    with pytest.raises(SpecError, match="training.health.divergence_factor"):
        _job(health={"divergence_factor": 0.5})
