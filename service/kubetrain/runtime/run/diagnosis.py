"""Training health as the driver reports it: why a run stopped on a NaN and what to try, and warnings with evidence.

Fed with the workers' events (run/progress.py); the decisions are train/health.py's. What comes out: the run's
error text, MLflow tags (kubetrain.health, kubetrain.diagnosis, kubetrain.warning.*), console lines and the
TrainingJob's status.health (the operator takes its reason and message for a Failed job).
"""

from __future__ import annotations

from ...spec import TrainingJob
from .. import contract as ev
from .. import storage
from ..train import checkpoint as ckpt
from ..train import health

REASONS = {
    health.NAN_LOSS: ("NaNLoss", "the training loss was NaN"),
    health.INF_LOSS: ("InfiniteLoss", "the training loss was infinite"),
    health.NAN_GRAD: ("NaNGradient", "the gradient norm was NaN"),
    health.INF_GRAD: ("InfiniteGradient", "the gradient norm was infinite"),
}


def advice(spec) -> list[str]:
    """What to try, from what the spec has now (only the changes it has not made yet)."""
    t = spec.training
    tips = [f"a lower spec.training.learning_rate (now {t.learning_rate:g}, e.g. {t.learning_rate / 3:.2g})"]
    if t.max_grad_norm is None:
        tips.append("spec.training.max_grad_norm: 1.0 (gradient clipping is off)")
    if t.precision != "fp32":
        tips.append(f"spec.training.precision: fp32 (now {t.precision})")
    if t.warmup_steps in (None, 0) and not t.warmup_ratio:
        tips.append("a warmup (spec.training.warmup_steps)")
    return tips


def stop_text(e: ev.Unhealthy, spec, last_checkpoint: tuple[int, str] | None) -> str:
    """The diagnosis of a run stopped on a non-finite value: the step, the lr then, the last good checkpoint."""
    what = REASONS.get(e.kind, (e.kind, e.kind))[1]
    where = (
        f"the last good checkpoint is step {last_checkpoint[0]} ({last_checkpoint[1]}), where a rerun with one of these changes resumes"
        if last_checkpoint
        else "no checkpoint was written before it"
    )
    return (
        f"training stopped at step {e.step}: {what} (learning rate {e.learning_rate:.3g} then); the step was not "
        f"checkpointed, {where}. Try: " + "; ".join(advice(spec))
    )


def last_checkpoint(job: TrainingJob) -> tuple[int, str] | None:
    """The run's newest complete checkpoint (step, path), as written under the checkpoint storage."""
    root = storage.join(job.spec.checkpoint.storage, job.name)
    try:
        steps = ckpt.steps_in(root)
    except Exception:  # an unreadable store must not hide the diagnosis itself
        return None
    return (steps[-1], ckpt.checkpoint_dir(root, steps[-1])) if steps else None


class Diagnosis:
    """One run's health: the stop (if any) and the warnings found in its logged losses."""

    def __init__(self, job: TrainingJob):
        h = job.spec.training.health
        self.job = job
        self.divergence = health.DivergenceDetector(h.divergence_factor, h.divergence_window)
        self.overfitting = health.OverfittingDetector(h.overfitting_patience)
        self.stopped: ev.Unhealthy | None = None
        self.error: str | None = None  # the stop's diagnosis, once concluded
        self.warnings: dict[str, str] = {}  # name (diverging, overfitting) -> evidence

    def on_step(self, e: ev.Stepped) -> str | None:
        """A warning's name when this logged loss raised or extended it."""
        loss = e.metrics.get("train_loss")
        if loss is None:
            return None
        self.overfitting.add_train(loss)
        spike = self.divergence.add(e.step, loss)
        if spike is None:
            return None
        spikes = self.divergence.spikes
        first = spikes[0].text()
        more = (
            f" ({len(spikes)} spikes, the largest {max(s.loss for s in spikes):.4g})"
            if len(spikes) > 1
            else ""
        )
        self.warnings["diverging"] = f"loss spike: {first}{more}"
        return "diverging"

    def on_eval(self, e: ev.Evaluated) -> str | None:
        if e.tag != "periodic" or "eval_loss" not in e.metrics:
            return None
        found = self.overfitting.add_eval(e.step, e.metrics["eval_loss"])
        if found is None:
            return None
        tip = (
            "; set spec.training.early_stopping to stop at the best evaluation"
            if self.job.spec.training.early_stopping is None
            else ""
        )
        self.warnings["overfitting"] = found.text() + tip
        return "overfitting"

    def on_unhealthy(self, e: ev.Unhealthy) -> None:
        self.stopped = e

    def conclude(self) -> str | None:
        """After the run: the stop's diagnosis (None when it did not stop), naming the last good checkpoint."""
        if self.stopped is not None and self.error is None:
            self.error = stop_text(self.stopped, self.job.spec, last_checkpoint(self.job))
        return self.error

    def tags(self) -> dict[str, str]:
        """MLflow tags: kubetrain.health (ok | warning | the stop's kind), the diagnosis, each warning."""
        state = self.stopped.kind if self.stopped else ("warning" if self.warnings else "ok")
        tags = {"kubetrain.health": state, **{f"kubetrain.warning.{k}": v for k, v in self.warnings.items()}}
        if self.error:
            tags["kubetrain.diagnosis"] = self.error
        return tags

    def status(self) -> dict | None:
        """The TrainingJob's status.health: a stop's reason and message, the warnings (None when all is well)."""
        if not self.stopped and not self.warnings:
            return None
        out: dict = {"warnings": dict(self.warnings)} if self.warnings else {}
        if self.stopped:
            out.update(reason=REASONS.get(self.stopped.kind, ("Unhealthy",))[0], message=self.conclude())
        return out
