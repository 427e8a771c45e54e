"""The strategies behind one registry: `make_engine` builds the engine `spec.strategy.type` names.

A new strategy is a new module here with an `@register("name")` Engine subclass (engines/base.py says
what it answers); DDP (ddp.py) is the reference, DeepSpeed ZeRO (deepspeed.py) and pipeline x data
parallel (pipeline.py) are checked against it.
"""

from __future__ import annotations

from . import ddp, deepspeed, pipeline  # noqa: F401  (each registers its engine)
from .base import Engine, engine_class, kept_rng, register

__all__ = [
    "Engine",
    "check_in_process",
    "check_model",
    "engine_class",
    "kept_rng",
    "make_engine",
    "register",
    "runs_in_process",
]


def make_engine(model, spec, total_steps: int, session, rebuild, objective=None) -> Engine:
    """The spec's engine around `model` on this session's rank; rebuild() returns a fresh whole model built
    like `model` (engines that split or shard it gather into one); objective replaces the model's own loss."""
    if not session.distributed:
        check_in_process(spec)
    cls = engine_class(spec)
    if objective is not None and not cls.takes_objective:
        raise ValueError(f"strategy '{spec.strategy.type}' trains on the model's own loss only")
    engine = cls(
        model,
        spec,
        total_steps,
        session.rank,
        session.world,
        session.device,
        rebuild=rebuild,
        distributed=session.distributed,
    )
    if objective is not None:
        engine.objective = objective
    return engine


def check_model(spec, model_dir: str | None) -> None:
    """SpecError when the resolved model (a local directory) cannot be trained with the spec's strategy:
    what validation cannot know, since the spec layer reads no files (run before training and by workers)."""
    engine_class(spec).check_model(spec, model_dir)


def runs_in_process(spec) -> bool:
    """Whether the spec can train in one process without a Ray Train worker group (train_in_process)."""
    return engine_class(spec).in_process and spec.resources.workers == 1


def check_in_process(spec) -> None:
    """ValueError unless runs_in_process(spec)."""
    workers = spec.resources.workers
    if not runs_in_process(spec):
        raise ValueError(
            f"strategy '{spec.strategy.type}' on {workers} worker(s) needs a Ray Train worker group; "
            "only ddp on one worker trains in one process"
        )
