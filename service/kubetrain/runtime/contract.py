"""The typed contract between the driver (run/) and the training workers (train/): worker config and events.

The driver hands every worker one `WorkerConfig`; rank 0 sends `Event`s back over a queue (a Ray queue
actor across processes, a plain queue in one process). Both sides import these classes, never a dict
whose keys each side spells on its own. A sweep trial (sweep/) sees the same events from its run.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class WorkerConfig:
    """What a training worker needs besides the spec: where things are and where results go."""

    job: dict  # the TrainingJob with paths resolved, as JSON (TrainingJob.model_validate on the worker)
    cache_dir: str  # datasets cache
    models_dir: str  # where a worker on another node resolves (and caches) the model
    final_dir: str  # the final model (adapter or full), published by rank 0
    best_dir: str  # the best model by the watched validation metric
    model_dir: str | None = None  # the model already resolved by the driver (None in a cluster)
    init_checkpoint: str | None = None  # a checkpoint to start from when the run has none of its own
    publish_root: str | None = None  # remote storage: final/ and best/ are mirrored under it
    queue: Any = None  # where rank 0 puts its events (None: nobody listens)


class RunStopped(Exception):
    """The run's caller asked it to stop (a sweep's scheduler stopped the trial): the recipe ends before its
    next micro-batch, so the checkpoint of the step it last reported is complete; nothing is published."""


@dataclass(frozen=True)
class Handshake:
    """How a driver in the same process steers an in-process recipe (a sweep's one-worker trials).

    After each periodic evaluation (and its checkpoint) the recipe waits until the driver has handled that
    Evaluated event: a sweep trial's tune.report returns only once Tune has decided on it, so a trial Tune
    stops trains no step past the evaluation it was stopped at, as a scheduler assumes. `stop` ends it.
    """

    stop: threading.Event = field(default_factory=threading.Event)
    handled: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))

    def evaluation_handled(self) -> None:
        """Driver: one more periodic evaluation handled."""
        self.handled.release()

    def wait_until_handled(self, poll_s: float = 0.1) -> None:
        """Recipe: wait for the driver to handle the evaluation just emitted; RunStopped once told to stop."""
        while not self.handled.acquire(timeout=poll_s):
            if self.stop.is_set():
                raise RunStopped("stopped by the caller after an evaluation")


@dataclass(frozen=True)
class Event:
    """Something rank 0 tells the driver; `time` is when it happened (wall clock, seconds)."""

    time: float = field(default_factory=time.time, kw_only=True)


@dataclass(frozen=True)
class RunStarted(Event):
    """Driver-side, first of every run: where it writes and its MLflow run (a sweep trial reports these)."""

    run_dir: str
    final_dir: str
    mlflow_run_id: str | None


@dataclass(frozen=True)
class ModelBuilt(Event):
    model_class: str
    trainable: int
    total: int


@dataclass(frozen=True)
class Resumed(Event):
    step: int
    path: str


@dataclass(frozen=True)
class Started(Event):
    """Set-up is done and the first step is next (after a resume: the step it resumed at)."""

    total_steps: int
    step: int
    world_size: int
    global_batch: int
    steps_per_epoch: int
    validation_examples: int = 0
    setup_seconds: dict[str, float] = field(default_factory=dict)
    placement_group: str | None = None  # of the run's Ray Train workers (a sweep reaps it)


@dataclass(frozen=True)
class Memory(Event):
    """Bytes of parameters, gradients and optimizer state per rank, after the first step."""

    strategy: str
    ranks: list[dict[str, int]]


@dataclass(frozen=True)
class Stepped(Event):
    """A logged optimizer step: train loss, learning rate, throughput, grad norm, system metrics."""

    step: int
    metrics: dict[str, float]


@dataclass(frozen=True)
class Evaluated(Event):
    """Validation metrics; tag: before (step 0) | periodic | final (generation metrics at the end)."""

    step: int
    tag: str
    metrics: dict[str, float]


@dataclass(frozen=True)
class Samples(Event):
    """Generations on validation prompts (before / final), for the summary."""

    tag: str
    samples: list


@dataclass(frozen=True)
class StoppedEarly(Event):
    step: int
    best_step: int | None
    best_metric: float | None


@dataclass(frozen=True)
class Finished(Event):
    """Training is over and the final model is written (at `path`)."""

    step: int
    path: str


@dataclass(frozen=True)
class Baselines(Event):
    """Classification: cheap models fitted on the same training split and scored on the same validation split
    as the model (train/baselines.py), by name (majority, tfidf) -> the model's eval_* metrics."""

    metrics: dict[str, dict[str, float]]


@dataclass(frozen=True)
class Predictions(Event):
    """Classification: the final model's validation labels and class probabilities, gathered from every rank
    (for the driver's confusion matrix, curves, threshold and calibration: run/classification_report.py)."""

    step: int
    label_names: list[str]
    labels: list[int]
    probs: list[list[float]]


@dataclass(frozen=True)
class Unhealthy(Event):
    """Training stopped before the optimizer update of `step`: its loss or gradient norm was NaN or infinite
    (train/health.py; `kind` one of its kinds). Every rank stopped; no checkpoint was written after it."""

    step: int  # the optimizer step that was not applied
    kind: str
    loss: float
    grad_norm: float | None
    learning_rate: float


@dataclass(frozen=True)
class Params(Event):
    """Settings the worker resolved from the data (e.g. class_weight.<label> for training.class_weights:
    balanced), logged as MLflow params beside the spec's own."""

    params: dict[str, str]
