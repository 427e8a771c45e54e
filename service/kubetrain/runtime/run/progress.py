"""Following a run: worker events applied to the console, MLflow and the Kubernetes status; the RunResult."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from rich.markup import escape  # evidence carries [brackets]: never markup

from .. import contract as ev
from . import classification_report
from .console import RunConsole
from .diagnosis import Diagnosis
from .ray_start import verbose
from .tracking import Tracker


@dataclass
class RunResult:
    """What a finished (or failed) run produced; the summary and the tests read this."""

    job_name: str
    succeeded: bool
    run_dir: str
    final_dir: str | None = None
    best_dir: str | None = None
    error: str | None = None
    steps: int = 0
    seconds: float = 0.0
    before: dict = field(default_factory=dict)
    after: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    samples_after: list = field(default_factory=list)
    resumed_from_step: int | None = None
    stopped_early: bool = False
    validation_examples: int = 0
    mlflow_run_id: str | None = None
    tracking_uri: str | None = None
    mlflow_hint: str = ""
    tracking_note: str | None = None
    memory: list[dict] = field(default_factory=list)  # per rank: param_bytes, grad_bytes, optimizer_bytes
    baselines: dict = field(default_factory=dict)  # classification: {baseline: eval_* metrics}
    classification: dict = field(default_factory=dict)  # classification: the final report (report.json)
    health: str | None = None  # why training stopped unhealthy (train/health.py kinds), None when it did not
    warnings: dict = field(default_factory=dict)  # training-health warnings: name -> evidence


class Progress:
    """Applies worker events to the console, MLflow, the Kubernetes status and the result.

    on_event, when given, sees every event after it is handled (a sweep trial reports to Tune from them).
    """

    def __init__(
        self,
        console: RunConsole,
        tracker: Tracker,
        reporter,
        result: RunResult,
        on_event: Callable[[ev.Event], None] | None = None,
    ):
        self.console, self.tracker, self.reporter, self.result = console, tracker, reporter, result
        self.on_event = on_event
        self.history: list[dict] = []
        self.total = 0
        self.first_step_time: float | None = None
        self.first_step = 0
        self.setup_started: float | None = None  # when rank 0 began its set-up (wall clock)
        self.latest: dict = {}
        self.diagnosis = Diagnosis(tracker.job)  # training health: the stop's diagnosis, warnings
        self.warned: set[str] = set()
        self.handlers = {
            ev.ModelBuilt: self.on_model,
            ev.Memory: self.on_memory,
            ev.Resumed: self.on_resumed,
            ev.Started: self.on_start,
            ev.Stepped: self.on_step,
            ev.Evaluated: self.on_eval,
            ev.Samples: self.on_samples,
            ev.StoppedEarly: self.on_stopped_early,
            ev.Finished: self.on_final,
            ev.Baselines: self.on_baselines,
            ev.Predictions: self.on_predictions,
            ev.Unhealthy: self.on_unhealthy,
            ev.Params: self.on_params,
        }

    def handle(self, events: list[ev.Event]) -> None:
        for event in events:
            self.handlers[type(event)](event)
            if self.on_event:
                self.on_event(event)
        if events and self.reporter:
            self.reporter.report(self.snapshot())

    def on_model(self, e: ev.ModelBuilt) -> None:
        pct = 100 * e.trainable / max(e.total, 1)
        self.console.say(f"{e.model_class}: {e.trainable:,} trainable of {e.total:,} parameters ({pct:.2f}%)")
        self.tracker.set_tags(
            {"model.trainable_parameters": str(e.trainable), "model.total_parameters": str(e.total)}
        )

    def on_memory(self, e: ev.Memory) -> None:
        """Per-rank bytes of parameters, gradients and optimizer state: MLflow tags and the result."""
        self.result.memory = e.ranks
        self.tracker.set_tags(
            {f"memory.rank{r}.{k}": str(v) for r, m in enumerate(e.ranks) for k, v in m.items()}
        )
        mib = [f"{(m['param_bytes'] + m['grad_bytes'] + m['optimizer_bytes']) / 2**20:.1f}" for m in e.ranks]
        self.console.say(
            f"{e.strategy}: per-rank parameters+gradients+optimizer state (MiB): {', '.join(mib)}"
        )

    def on_resumed(self, e: ev.Resumed) -> None:
        self.result.resumed_from_step = e.step
        self.console.say(f"Resuming from the checkpoint at step {e.step} ({e.path})")

    def on_start(self, e: ev.Started) -> None:
        self.total = e.total_steps
        self.result.validation_examples = e.validation_examples
        self.first_step = e.step
        self.console.say(
            f"Training {self.total} steps on {e.world_size} workers, global batch {e.global_batch}"
        )
        setup = e.setup_seconds or {}
        self.setup_started = e.time - sum(setup.values())
        self.tracker.set_tags({f"setup_seconds.{k}": str(v) for k, v in setup.items()})
        if verbose():
            self.console.say("worker set-up (s): " + ", ".join(f"{k} {v}" for k, v in setup.items()))
        self.console.start(self.total, e.step)

    def on_step(self, e: ev.Stepped) -> None:
        step, metrics = e.step, e.metrics
        if self.first_step_time is None:
            self.first_step_time, self.first_step = e.time, step
        self.result.steps = step
        self.latest.update({k: v for k, v in metrics.items() if not k.startswith("system/")})
        self.history.append({"step": step, "time": e.time, **metrics})
        self.tracker.log_metrics(metrics, step)
        self.console.step(step, metrics, self.eta(step, e.time))
        self.on_warning(self.diagnosis.on_step(e))

    def on_eval(self, e: ev.Evaluated) -> None:
        metrics, step = e.metrics, e.step
        if not metrics:
            return
        if e.tag == "before":
            self.result.before.update(metrics)
        else:
            self.result.after.update(metrics)
        self.latest.update(metrics)
        self.history.append({"step": step, **metrics})
        self.tracker.log_evaluation(metrics, step)  # remembered: the published models link to them
        self.on_warning(self.diagnosis.on_eval(e))
        if e.tag == "periodic":
            shown = ", ".join(f"{k.removeprefix('eval_')} {v:.4f}" for k, v in metrics.items())
            self.console.say(f"step {step}: {shown}")

    def on_samples(self, e: ev.Samples) -> None:
        if e.tag == "final":
            self.result.samples_after = e.samples

    def on_stopped_early(self, e: ev.StoppedEarly) -> None:
        self.result.stopped_early = True
        self.console.say(f"Early stopping at step {e.step}: best {e.best_metric:.4f} at step {e.best_step}")

    def on_baselines(self, e: ev.Baselines) -> None:
        classification_report.record_baselines(e, self.result, self.tracker, self.console)

    def on_predictions(self, e: ev.Predictions) -> None:
        threshold = self.tracker.job.spec.evaluation.threshold
        classification_report.record_predictions(e, self.result, self.tracker, threshold)

    def on_params(self, e: ev.Params) -> None:
        self.tracker.log_params(e.params)

    def on_unhealthy(self, e: ev.Unhealthy) -> None:
        self.diagnosis.on_unhealthy(e)
        self.result.health = e.kind
        self.console.say(f"[red]step {e.step}: {e.kind}, training stops (nothing from it is saved)[/red]")

    def on_warning(self, name: str | None) -> None:
        """A training-health warning raised or extended: MLflow tag now, the console once, the result."""
        if name is None:
            return
        text = self.result.warnings[name] = self.diagnosis.warnings[name]
        self.tracker.set_tags({f"kubetrain.warning.{name}": text})
        if name not in self.warned:
            self.warned.add(name)
            self.console.say(f"[yellow]warning ({name}):[/yellow] {escape(text)}")

    def on_final(self, e: ev.Finished) -> None:
        self.result.steps = e.step

    def eta(self, step: int, now: float) -> float | None:
        if self.first_step_time is None or step <= self.first_step or not self.total:
            return None
        rate = (now - self.first_step_time) / (step - self.first_step)
        return rate * (self.total - step)

    def snapshot(self, final: bool = False) -> dict:
        """The TrainingJob's status.progress now (a final one has no ETA)."""
        step = self.result.steps
        eta = self.eta(step, time.time())
        return {
            "step": step,
            "total_steps": self.total,
            "percent": round(100.0 * step / self.total, 1) if self.total else 0.0,
            "eta_seconds": None if final or eta is None else round(eta),
            "metrics": {k: round(float(v), 6) for k, v in self.latest.items()},
            "resumed_from_step": self.result.resumed_from_step,
            "mlflow_run_id": self.tracker.run_id,
            "mlflow_url": self.tracker.ui_hint() if self.tracker.run_id else None,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "health": self.diagnosis.status(),  # status.health (status_reporter moves it out of progress)
        }
