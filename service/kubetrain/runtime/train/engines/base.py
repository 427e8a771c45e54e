"""The Engine interface (what the recipe asks of a strategy), the registry of strategies and shared helpers.

The recipe is the same for every strategy: it hands an engine micro-batches, asks it to step at
accumulation boundaries, and asks it for checkpoints and for the whole model at the end. Whatever else
differs by strategy (the data shard a rank reads, the environment before imports, the model checks) is a
method here, so nothing outside engines/ branches on spec.strategy.type.
"""

from __future__ import annotations

import contextlib
import random

import numpy as np
import torch

from .. import checkpoint as ckpt
from .. import schedule
from ..objective import Objective, model_loss

_ENGINES: dict[str, type[Engine]] = {}


def register(kind: str):
    """Class decorator: the engine for spec.strategy.type == kind."""

    def add(cls):
        _ENGINES[kind] = cls
        return cls

    return add


def engine_class(spec) -> type[Engine]:
    return _ENGINES[spec.strategy.type]


class Engine:
    """The interface and what is shared: the model in training, the unwrapped model, the schedule."""

    #: whether it runs without a torch.distributed group (the recipe in one process, no Ray Train)
    in_process = False
    #: what evaluate() calls like a transformers model (returns None on ranks without the loss, e.g. early stages)
    model: torch.nn.Module
    #: the unwrapped transformers / PEFT model this rank holds
    inner: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    training = None  # the spec's training section
    total_steps = 0
    #: what train_batch minimises (train/objective.py); make_engine sets the recipe's
    objective: Objective = staticmethod(model_loss)
    #: whether train_batch calls `objective` (the pipeline engine computes its loss per stage)
    takes_objective = True

    # ---- what differs by strategy before an engine exists -------------------------------------------

    @classmethod
    def prepare_environment(cls, spec, device_type: str) -> None:
        """Before the strategy's libraries are imported (environment variables they read)."""

    @classmethod
    def data_shard(cls, spec, rank: int, world: int) -> tuple[int, int]:
        """(shard, shards) of the training data this rank reads."""
        return rank, world

    @classmethod
    def check_model(cls, spec, model_dir: str | None) -> None:
        """Raise when the resolved model cannot be trained with this strategy (it is known only now)."""

    # ---- training ------------------------------------------------------------------------------------

    def train_batch(self, batch: dict, sync: bool, accum: int, autocast) -> float:
        """Forward and backward one per-worker batch; returns its loss divided by accum (same on every rank)."""
        raise NotImplementedError

    def step(self, max_grad_norm: float | None, norm: float | None = None) -> float | None:
        """Clip, optimizer step, schedule step, zero gradients; returns the gradient norm before clipping.
        norm: this rank's gradient norm when the caller measured it already (not measured again)."""
        raise NotImplementedError

    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def apply_hyperparameters(self, training, step: int | None = None) -> None:
        """After loading a checkpoint: the spec's learning rate and weight decay win over the saved ones, and
        the schedule is rebuilt on them at `step` (default: where the current schedule is)."""
        step = self.scheduler.last_epoch if step is None else step
        schedule.set_hyperparameters(self.optimizer, training)
        self.scheduler = schedule.build_scheduler(training, self.optimizer, self.total_steps, step)

    # ---- checkpoints and the whole model -------------------------------------------------------------

    def save(self, directory: str, rank: int, st: ckpt.TrainState) -> None:
        """Called on every rank with its own directory; Ray merges them into one checkpoint."""
        raise NotImplementedError

    def load(self, directory: str, rank: int) -> ckpt.TrainState:
        """Restore what save wrote, and the schedule at its step (apply_hyperparameters)."""
        raise NotImplementedError

    @contextlib.contextmanager
    def whole_model(self):
        """Collective: every rank gets a module holding the whole trained model (generation, saving)."""
        yield self.inner

    def memory(self) -> dict[str, int]:
        """Bytes of parameters, gradients and optimizer state this rank holds."""
        raise NotImplementedError


@contextlib.contextmanager
def kept_rng():
    """Building a model draws from (or reseeds) the global RNGs; training must not notice."""
    py, npy = random.getstate(), np.random.get_state()
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def optimizer_bytes(optimizer) -> int:
    """Bytes of tensors in the optimizer's state (Adam moments, step counters) held by this rank."""
    total = 0
    for per_param in optimizer.state.values():
        for v in per_param.values():
            if torch.is_tensor(v):
                total += v.numel() * v.element_size()
    return total
