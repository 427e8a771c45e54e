"""How the work is spread over workers: a discriminated union on `type`: ddp, deepspeed or pipeline.

What the spec fixes in a DeepSpeed config is stated here (pure Python, no deepspeed import) so that
`kubetrain validate` can reject a `strategy.config` override that contradicts the spec; the DeepSpeed
engine builds the config. The spec reads no files: a local model's layers are checked by the runtime.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Field, Tag, model_validator

from .base import Spec, type_discriminator


class DDPStrategy(Spec):
    """PyTorch DistributedDataParallel: every worker holds the whole model, gradients are all-reduced."""

    type: Literal["ddp"] = Field("ddp", description="Distributed data parallel.")
    backend: Literal["auto", "gloo", "nccl"] = Field(
        "auto", description="Collective backend: auto picks nccl on GPUs and gloo on CPUs."
    )
    find_unused_parameters: bool = Field(False, description="Let DDP tolerate parameters without gradients.")


class DeepSpeedStrategy(Spec):
    """DeepSpeed ZeRO: optimizer state (1), plus gradients (2), plus parameters (3) partitioned over workers."""

    type: Literal["deepspeed"] = Field("deepspeed", description="DeepSpeed ZeRO data parallel.")
    stage: Literal[0, 1, 2, 3] = Field(
        2,
        description="ZeRO stage: 0 plain data parallel, 1 partitions optimizer state, 2 also gradients, "
        "3 also parameters.",
    )
    offload_optimizer: Literal["none", "cpu"] = Field(
        "none", description="Keep optimizer state (and its step) in CPU memory (ZeRO-Offload; stage 1-3)."
    )
    offload_params: Literal["none", "cpu"] = Field(
        "none", description="Keep partitioned parameters in CPU memory (ZeRO-Infinity; stage 3 only)."
    )
    config: dict[str, Any] = Field(
        default_factory=dict,
        description="DeepSpeed config entries merged over the one kubetrain builds from the spec (e.g. "
        "zero_optimization.overlap_comm, reduce_bucket_size). An entry that contradicts the spec (batch "
        "sizes, accumulation, clipping, precision, optimizer, schedule, stage, offload) is an error.",
    )

    @model_validator(mode="after")
    def _offload_fits_stage(self) -> DeepSpeedStrategy:
        if self.offload_params != "none" and self.stage != 3:
            raise ValueError(
                f"offload_params needs stage 3 (ZeRO-3 partitions parameters); got stage {self.stage}"
            )
        if self.offload_optimizer != "none" and self.stage == 0:
            raise ValueError(
                "offload_optimizer needs stage 1, 2 or 3 (stage 0 does not partition optimizer state)"
            )
        return self


class PipelineStrategy(Spec):
    """Pipeline x data parallel: the model's layers split into `stages`, workers / stages pipeline replicas."""

    type: Literal["pipeline"] = Field(
        "pipeline", description="Pipeline parallel with data-parallel replicas."
    )
    stages: int = Field(
        2,
        ge=2,
        le=512,
        description="Pipeline stages; must divide resources.workers (workers / stages replicas) and not "
        "exceed the model's decoder layers. Embeddings go on the first stage, final norm and head on the last.",
    )
    micro_batches: int = Field(
        2,
        ge=1,
        le=4096,
        description="Micro-batches each per-worker batch is split into; must divide batch_size.",
    )
    schedule: Literal["gpipe", "1f1b"] = Field(
        "1f1b",
        description="gpipe: all forwards then all backwards; 1f1b: interleaved, fewer activations held.",
    )


Strategy = Annotated[
    Union[
        Annotated[DDPStrategy, Tag("ddp")],
        Annotated[DeepSpeedStrategy, Tag("deepspeed")],
        Annotated[PipelineStrategy, Tag("pipeline")],
    ],
    type_discriminator("ddp"),
]

PIPELINE_ARCHITECTURES = ("llama", "gpt2", "mistral", "qwen2")
"""model_type values whose decoder runtime/train/engines/stages.py knows how to split."""


def deepspeed_fixed(spec) -> dict[str, Any]:
    """What the spec fixes in a DeepSpeed config, under DeepSpeed's keys: what `strategy.config` may restate
    but not contradict. The DeepSpeed engine (runtime/train/engines/deepspeed.py) builds the config on it."""
    s, t = spec.strategy, spec.training
    zero: dict[str, Any] = {"stage": s.stage}
    if s.offload_optimizer == "cpu":
        zero["offload_optimizer"] = {"device": "cpu"}
    if s.offload_params == "cpu":
        zero["offload_param"] = {"device": "cpu"}
    params: dict[str, Any] = {"lr": t.learning_rate, "weight_decay": t.weight_decay}
    if t.optimizer == "adamw":
        optimizer = {"type": "AdamW", "params": {**params, "betas": list(t.adam_betas)}}
    else:
        optimizer = {"type": "SGD", "params": {**params, "momentum": 0.9}}
    return {
        "train_micro_batch_size_per_gpu": t.batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "train_batch_size": t.batch_size * t.gradient_accumulation_steps * spec.resources.workers,
        "gradient_clipping": t.max_grad_norm or 0.0,
        "bf16": {"enabled": t.precision == "bf16"},
        "fp16": {"enabled": t.precision == "fp16"},
        "zero_optimization": zero,
        "optimizer": optimizer,
    }


def deepspeed_overrides(spec, base: dict[str, Any]) -> dict[str, Any]:
    """base with `strategy.config` merged in; ValueError naming `strategy.config.<key>` when an override
    contradicts deepspeed_fixed (validation passes base={} just to check)."""
    s = spec.strategy
    if "scheduler" in s.config:
        raise ValueError(
            "strategy.config.scheduler: the learning-rate schedule comes from training.schedule, "
            "training.warmup_steps and training.warmup_ratio; set those instead"
        )
    return _merge(base, s.config, deepspeed_fixed(spec), "strategy.config")


_OWNER = {
    "train_micro_batch_size_per_gpu": "training.batch_size",
    "gradient_accumulation_steps": "training.gradient_accumulation_steps",
    "train_batch_size": "training.batch_size x gradient_accumulation_steps x resources.workers",
    "gradient_clipping": "training.max_grad_norm",
    "bf16": "training.precision",
    "fp16": "training.precision",
    "zero_optimization.stage": "strategy.stage",
    "zero_optimization.offload_optimizer": "strategy.offload_optimizer",
    "zero_optimization.offload_param": "strategy.offload_params",
    "optimizer": "training.optimizer, learning_rate, weight_decay and adam_betas",
}


def _merge(base: dict, override: dict, derived: Any, path: str) -> dict:
    """base with override merged in recursively; a leaf that differs from a spec-derived value is an error."""
    out = dict(base)
    for key, value in override.items():
        here = f"{path}.{key}"
        d = derived.get(key) if isinstance(derived, dict) else None
        if isinstance(value, dict) and (isinstance(out.get(key), dict) or isinstance(d, dict)):
            inner = out.get(key) if isinstance(out.get(key), dict) else {}
            out[key] = _merge(inner, value, d if isinstance(d, dict) else {}, here)
        elif d is not None and not _same(value, d):
            owner = _owner(here.removeprefix("strategy.config."))
            raise ValueError(
                f"{here}: {value!r} contradicts the spec ({d!r} from {owner}); set {owner} instead"
            )
        else:
            out[key] = value
    return out


def _owner(key: str) -> str:
    while key and key not in _OWNER:
        key = key.rpartition(".")[0]
    return _OWNER.get(key, "the spec")


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    return a == b


def strategy_problems(spec) -> list[tuple[tuple, str, Any]]:
    """(location, reason, input) for each way the strategy does not fit the rest of the spec."""
    s = spec.strategy
    if s.type == "deepspeed":
        try:
            deepspeed_overrides(spec, {})
        except ValueError as e:
            return [(("strategy", "config"), str(e), s.config)]
        return []
    if s.type != "pipeline":
        return []
    out = []
    workers = spec.resources.workers
    if workers % s.stages:
        out.append(
            (
                ("strategy", "stages"),
                f"{s.stages} stages do not divide resources.workers ({workers}); workers must be stages x replicas",
                s.stages,
            )
        )
    if spec.task != "causal_lm":
        out.append((("strategy", "type"), f"pipeline splits causal LMs; task is {spec.task}", s.type))
    if spec.training.batch_size % s.micro_batches:
        out.append(
            (
                ("strategy", "micro_batches"),
                f"{s.micro_batches} micro-batches do not divide training.batch_size ({spec.training.batch_size})",
                s.micro_batches,
            )
        )
    if spec.training.precision == "fp16":
        out.append(
            (("training", "precision"), "pipeline supports fp32 and bf16, not fp16 loss scaling", "fp16")
        )
    if s.schedule == "1f1b" and s.micro_batches < s.stages:
        out.append(
            (
                ("strategy", "micro_batches"),
                f"the 1f1b schedule needs at least as many micro-batches as stages ({s.micro_batches} < "
                f"{s.stages}); raise micro_batches or use schedule: gpipe",
                s.micro_batches,
            )
        )
    model = spec.model.from_config  # a model on disk is checked by the pipeline engine once resolved
    if model is not None:
        out += pipeline_model_problems(s, model.architecture, model.num_layers)
    return out


def pipeline_model_problems(s: PipelineStrategy, arch: str | None, layers: int | None) -> list:
    """(location, reason, input) when a model of this architecture and depth cannot be split into s.stages."""
    out = []
    if arch is not None and arch not in PIPELINE_ARCHITECTURES:
        out.append(
            (
                ("strategy", "type"),
                f"cannot split model_type '{arch}' into stages; pipeline supports {', '.join(PIPELINE_ARCHITECTURES)}",
                s.type,
            )
        )
    if layers is not None and s.stages > layers:
        out.append(
            (("strategy", "stages"), f"{s.stages} stages for a model with {layers} decoder layers", s.stages)
        )
    return out
