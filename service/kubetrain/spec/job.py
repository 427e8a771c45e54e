"""The TrainingJob object: the one file format for kubectl apply, the SDK, the REST API and `kubetrain run`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from .. import API_VERSION, KIND
from .base import Rfc1123Label, Spec
from .data import DataSpec
from .dpo import DPO_METRICS, DPOSpec, dpo_problem
from .env import EnvVar
from .evaluation import THRESHOLD_DESCRIPTION, Threshold
from .lifecycle import LifecycleSpec
from .model import ModelSpec
from .peft import LoraSpec, Peft, peft_problems
from .resources import ResourcesSpec
from .strategy import DDPStrategy, Strategy, strategy_problems
from .sweep import SweepSpec, sweep_problems
from .tracking import CheckpointSpec, TrackingSpec
from .training import TrainingSpec

CLASSIFICATION_METRICS = ("accuracy", "precision", "recall", "f1", "auc")
LM_METRICS = ("perplexity", "token_accuracy", "exact_match")
PERIODIC_LM_METRICS = ("perplexity", "token_accuracy")  # exact_match is scored only before and after training


class GenerationEval(Spec):
    """Generate answers for held-out prompts and score them against the reference (instruction data)."""

    examples: int = Field(64, ge=1, le=100_000, description="How many validation examples to generate for.")
    max_new_tokens: int = Field(32, ge=1, le=4096, description="Longest generated answer.")
    batch_size: int = Field(16, ge=1, le=4096, description="Prompts generated together.")


class EvaluationSpec(Spec):
    """Task metrics beyond validation loss."""

    generation: GenerationEval | None = Field(
        None,
        description="Score exact-match accuracy of greedy generations before and after training "
        "(instruction and chat data).",
    )
    threshold: Threshold | None = Field(None, description=THRESHOLD_DESCRIPTION)


class ObjectMeta(Spec):
    """Kubernetes object metadata. Server-set fields are accepted (so `kubectl get -o yaml` output runs)."""

    name: Rfc1123Label = Field(
        ..., description="Job name: an RFC 1123 label; also the run's storage directory."
    )
    namespace: str | None = Field(None, description="Kubernetes namespace (cluster only).")
    labels: dict[str, str] = Field(default_factory=dict, description="Labels, copied onto the RayJob.")
    annotations: dict[str, str] = Field(default_factory=dict, description="Annotations.")
    uid: str | None = Field(None, description="Set by the API server.")
    resourceVersion: str | None = Field(None, description="Set by the API server.")
    generation: int | None = Field(None, description="Set by the API server.")
    creationTimestamp: str | None = Field(None, description="Set by the API server.")
    deletionTimestamp: str | None = Field(None, description="Set by the API server.")
    deletionGracePeriodSeconds: int | None = Field(None, description="Set by the API server.")
    finalizers: list[str] = Field(default_factory=list, description="Finalizers.")
    ownerReferences: list[dict[str, Any]] = Field(default_factory=list, description="Owner references.")
    managedFields: list[dict[str, Any]] = Field(default_factory=list, description="Set by the API server.")
    generateName: str | None = Field(None, description="Name prefix for server-generated names.")


class TrainingJobSpec(Spec):
    """Everything about one training run (or, with sweep, a hyperparameter search over such runs)."""

    model: ModelSpec = Field(..., description="The model to train.")
    task: Literal["causal_lm", "sequence_classification", "dpo"] = Field(
        "causal_lm",
        description="causal_lm: next-token prediction (pretraining, SFT with prompt masking); "
        "sequence_classification: a classification head on the model; dpo: Direct Preference Optimization "
        "on preference pairs (data.format preference).",
    )
    data: DataSpec = Field(..., description="Training and validation data.")
    peft: Peft = Field(
        default_factory=LoraSpec, description="LoRA adapters, or type none for a full fine-tune."
    )
    training: TrainingSpec = Field(default_factory=TrainingSpec, description="Optimisation settings.")
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec, description="Task metrics.")
    dpo: DPOSpec | None = Field(
        None, description="DPO loss settings (task dpo only; its defaults when left out)."
    )
    strategy: Strategy = Field(default_factory=DDPStrategy, description="Distribution strategy (by type).")
    resources: ResourcesSpec = Field(
        default_factory=ResourcesSpec, description="Workers and their resources."
    )
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec, description="Checkpoints and resume.")
    tracking: TrackingSpec = Field(default_factory=TrackingSpec, description="MLflow tracking.")
    lifecycle: LifecycleSpec = Field(
        default_factory=LifecycleSpec, description="Retries, deadlines, clean-up."
    )
    env: list[EnvVar] = Field(
        default_factory=list, description="Extra environment variables for the runtime."
    )
    sweep: SweepSpec | None = Field(
        None,
        description="Make this job a hyperparameter sweep (Ray Tune): each trial is a run of this spec "
        "with the parameters replaced.",
    )

    @model_validator(mode="before")
    @classmethod
    def _dpo_defaults(cls, data: Any) -> Any:
        """A dpo job without a dpo section gets its defaults (shown in the rendered spec); other tasks none."""
        if isinstance(data, dict) and data.get("task") == "dpo" and data.get("dpo") is None:
            return {**data, "dpo": {}}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> TrainingJobSpec:
        classification = self.task == "sequence_classification"
        if (why := dpo_problem(self)) is not None:
            raise ValueError(why)
        if classification != (self.data.format == "classification"):
            raise ValueError(
                f"task '{self.task}' does not fit data.format '{self.data.format}': sequence_classification "
                "goes with format classification, causal_lm with text, instruction or chat"
            )
        if self.training.precision == "fp16" and self.resources.gpus_per_worker == 0:
            raise ValueError(
                "training.precision fp16 needs GPUs (resources.gpus_per_worker > 0); on CPU use bf16 or fp32"
            )
        if self.evaluation.generation and self.data.format not in ("instruction", "chat", "preference"):
            raise ValueError("evaluation.generation needs data.format instruction, chat or preference")
        if self.evaluation.threshold is not None and not classification:
            raise ValueError("evaluation.threshold needs task sequence_classification (two classes)")
        if self.training.class_weights is not None and not classification:
            raise ValueError(
                f"training.class_weights needs task sequence_classification (weighted cross-entropy); "
                f"task is {self.task}"
            )
        es = self.training.early_stopping
        if es is not None:
            metric = es.metric.removeprefix("eval_")
            allowed = ("loss",) + (
                CLASSIFICATION_METRICS
                if classification
                else DPO_METRICS
                if self.task == "dpo"
                else LM_METRICS
            )
            if metric not in allowed:
                raise ValueError(
                    f"training.early_stopping.metric '{es.metric}' is not a validation metric of {self.task}; "
                    f"allowed: {', '.join('eval_' + m for m in allowed)}"
                )
        problems = strategy_problems(self) + peft_problems(self)
        if problems:
            raise ValidationError.from_exception_data(
                "TrainingJobSpec",
                [
                    InitErrorDetails(
                        type=PydanticCustomError("strategy", "{why}", {"why": why}), loc=loc, input=given
                    )
                    for loc, why, given in problems
                ],
            )
        if self.sweep is not None:
            self._check_sweep(classification)
        return self

    def _check_sweep(self, classification: bool) -> None:
        sweep = self.sweep
        if not self.data.validation and not self.data.validation_split:
            raise ValueError("sweep needs validation data: set data.validation or data.validation_split > 0")
        allowed = tuple(
            "eval_" + m
            for m in ("loss",)
            + (
                CLASSIFICATION_METRICS
                if classification
                else DPO_METRICS
                if self.task == "dpo"
                else PERIODIC_LM_METRICS
            )
        )
        errors = [
            InitErrorDetails(type=PydanticCustomError("sweep", "{why}", {"why": why}), loc=loc, input=given)
            for loc, why, given in [
                (
                    ("sweep", "metric" if i == 0 else "second_objective"),
                    f"'{o.metric}' is not a metric every "
                    f"evaluation of {self.task} reports; allowed: {', '.join(allowed)}",
                    o.metric,
                )
                for i, o in enumerate(sweep.objectives())
                if o.metric not in allowed
            ]
            + sweep_problems(self, TrainingJobSpec)
        ]
        if errors:
            raise ValidationError.from_exception_data("TrainingJobSpec", errors)


class TrainingJob(Spec):
    """A kubetrain TrainingJob (kubetrain.dev/v1alpha1)."""

    apiVersion: Literal["kubetrain.dev/v1alpha1"] = Field(API_VERSION, description="kubetrain.dev/v1alpha1")
    kind: Literal["TrainingJob"] = Field(KIND, description="TrainingJob")
    metadata: ObjectMeta = Field(..., description="Object metadata; metadata.name names the job.")
    spec: TrainingJobSpec = Field(..., description="The desired training run.")
    status: dict[str, Any] | None = Field(None, description="Written by the operator; ignored on input.")

    @property
    def name(self) -> str:
        return self.metadata.name
