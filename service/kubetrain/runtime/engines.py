"""One object per strategy that holds the model on this rank and knows how to step, checkpoint and gather it.

The loop (loop.py) is the same for every strategy: it hands an engine micro-batches, asks it to step at
accumulation boundaries, and asks it for checkpoints and for the whole model at the end. DDP is the
reference; DeepSpeed ZeRO (here) and pipeline x data parallel (pipeline.py) are checked against it.
"""

from __future__ import annotations

import contextlib
import os
import random

import numpy as np
import torch
import torch.distributed as dist

from . import state as ckpt


class Engine:
    """The interface and what is shared: the model in training, the unwrapped model, the data shard."""

    #: what evaluate() calls like a transformers model (returns None on ranks without the loss, e.g. early stages)
    model: torch.nn.Module
    #: the unwrapped transformers / PEFT model this rank holds
    inner: torch.nn.Module

    def train_batch(self, batch: dict, sync: bool, accum: int, autocast) -> float:
        """Forward and backward one per-worker batch; returns its loss divided by accum (same on every rank)."""
        raise NotImplementedError

    def step(self, max_grad_norm: float | None) -> float | None:
        """Clip, optimizer step, schedule step, zero gradients; returns the gradient norm before clipping."""
        raise NotImplementedError

    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def save(self, directory: str, rank: int, st: ckpt.TrainState) -> None:
        """Called on every rank with its own directory; Ray merges them into one checkpoint."""
        raise NotImplementedError

    def load(self, directory: str, rank: int) -> ckpt.TrainState:
        raise NotImplementedError

    @contextlib.contextmanager
    def whole_model(self):
        """Collective: every rank gets a module holding the whole trained model (generation, saving)."""
        yield self.inner

    def apply_hyperparameters(self, training) -> None:
        """After loading a checkpoint: the spec's learning rate and weight decay win over the saved ones.

        A no-op for a plain resume (same spec); for a sweep trial that takes over another trial's checkpoint
        with a mutated config (population-based training) it is what makes the mutation take effect.
        """
        scheduler, optimizer = self.scheduler, self.optimizer
        scheduler.base_lrs = [training.learning_rate for _ in scheduler.base_lrs]
        lambdas = getattr(scheduler, "lr_lambdas", None)
        for i, group in enumerate(optimizer.param_groups):
            group["initial_lr"] = training.learning_rate
            factor = lambdas[i](scheduler.last_epoch) if lambdas else 1.0
            group["lr"] = training.learning_rate * factor
            if "weight_decay" in group:
                group["weight_decay"] = training.weight_decay
        scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]

    def memory(self) -> dict[str, int]:
        """Bytes of parameters, gradients and optimizer state this rank holds."""
        raise NotImplementedError


class DDPEngine(Engine):
    """torch DistributedDataParallel through ray.train.torch.prepare_model, with an optional GradScaler."""

    def __init__(self, model, spec, total_steps: int, rank: int, world: int, device, rebuild=None):
        import ray.train.torch as rt

        self.model = rt.prepare_model(
            model,
            parallel_strategy_kwargs={
                "find_unused_parameters": getattr(spec.strategy, "find_unused_parameters", False)
            },
        )
        self.inner = self.model.module if hasattr(self.model, "module") else self.model
        self.optimizer = build_optimizer(spec.training, self.model.parameters(), device)
        self.scheduler = build_scheduler(spec.training, self.optimizer, total_steps)
        self.scaler = torch.amp.GradScaler("cuda") if spec.training.precision == "fp16" else None

    def train_batch(self, batch, sync, accum, autocast):
        no_sync = sync or not hasattr(self.model, "no_sync")
        with contextlib.nullcontext() if no_sync else self.model.no_sync():
            with autocast():
                loss = self.model(**batch).loss / accum
            (self.scaler.scale(loss) if self.scaler else loss).backward()
        return loss.item()

    def step(self, max_grad_norm):
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        norm = (
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_grad_norm) if max_grad_norm else None
        )
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm) if norm is not None else None

    def save(self, directory, rank, st):
        ckpt.save(directory, rank, self.inner, self.optimizer, self.scheduler, st)

    def load(self, directory, rank):
        return ckpt.load(directory, rank, self.inner, self.optimizer, self.scheduler)

    def memory(self):
        return {
            "param_bytes": _bytes(self.inner.parameters()),
            "grad_bytes": _bytes(p for p in self.inner.parameters() if p.requires_grad),
            "optimizer_bytes": _optimizer_bytes(self.optimizer),
        }


class DeepSpeedEngine(Engine):
    """A DeepSpeed engine built from the spec's config (spec/strategy.py); it owns accumulation and clipping."""

    TAG = "deepspeed"

    def __init__(self, model, spec, total_steps: int, rank: int, world: int, device, rebuild=None):
        import deepspeed

        from ..spec.strategy import deepspeed_config

        self.config = deepspeed_config(spec, gpu=device.type == "cuda")
        self.stage = spec.strategy.stage
        trainable = [p for p in model.parameters() if p.requires_grad]
        self.model, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model,
            model_parameters=trainable,
            config=self.config,
            # transformers' schedule, as DDP uses: DeepSpeed's WarmupCosineLR has another warmup formula and floor.
            lr_scheduler=lambda opt: build_scheduler(spec.training, opt, total_steps),
            dist_init_required=False,
        )
        self.inner = self.model.module
        self.rebuild = rebuild

    def train_batch(self, batch, sync, accum, autocast):
        loss = self.model(**batch).loss  # DeepSpeed handles bf16 itself; backward divides by accumulation
        self.model.backward(loss)
        self.model.step()  # a no-op for the optimizer until the accumulation boundary
        return loss.item() / accum

    def step(self, max_grad_norm):
        norm = self.model.get_global_grad_norm()
        return float(norm) if norm is not None else None

    def save(self, directory, rank, st):
        # Every rank writes its shard (distinct file names), so Ray's per-rank uploads merge into one checkpoint.
        self.model.save_checkpoint(directory, tag=self.TAG, save_latest=False)
        ckpt.save_position(directory, rank, st)

    def load(self, directory, rank):
        path, _ = self.model.load_checkpoint(directory, tag=self.TAG)
        if path is None:
            raise RuntimeError(f"no DeepSpeed checkpoint under {directory}/{self.TAG}")
        return ckpt.load_position(directory, rank)

    @contextlib.contextmanager
    def whole_model(self):
        if self.stage < 3:
            yield self.inner
            return
        import deepspeed

        # ZeRO-3 partitions every parameter and its hooks gather them with collectives on every forward, so
        # ranks generating different numbers of tokens would deadlock. Gather once, copy into a plain model.
        with deepspeed.zero.GatheredParameters(list(self.inner.parameters()), modifier_rank=None):
            full = {k: v.detach().clone() for k, v in self.inner.state_dict().items()}
        with kept_rng():
            whole = self.rebuild()
        whole.load_state_dict(full)
        del full
        yield whole

    def memory(self):
        params = [p for p in self.inner.parameters()]
        if self.stage == 3:  # ds_tensor is this rank's partition; p.data is an empty placeholder
            param_bytes = sum(
                p.ds_tensor.numel() * p.ds_tensor.element_size() for p in params if hasattr(p, "ds_tensor")
            )
        else:
            param_bytes = _bytes(params)
        opt = self.optimizer
        grad_bytes = _zero_grad_bytes(self.stage, params)
        return {
            "param_bytes": param_bytes,
            "grad_bytes": grad_bytes,
            "optimizer_bytes": _optimizer_bytes(getattr(opt, "optimizer", opt)),
        }


def make_engine(model, spec, total_steps: int, rank: int, world: int, device, rebuild) -> Engine:
    """rebuild() returns a fresh whole model built like `model` (engines that split it gather into one)."""
    kind = spec.strategy.type
    if kind == "deepspeed":
        return DeepSpeedEngine(model, spec, total_steps, rank, world, device, rebuild=rebuild)
    if kind == "pipeline":
        from .pipeline import PipelineEngine

        return PipelineEngine(model, spec, total_steps, rank, world, device, rebuild=rebuild)
    return DDPEngine(model, spec, total_steps, rank, world, device)


def data_shard(spec, rank: int, world: int) -> tuple[int, int]:
    """(shard, shards) of the training data this rank reads: pipeline stages of one replica read the same."""
    if spec.strategy.type == "pipeline":
        from .pipeline import layout

        replica, _ = layout(rank, world, spec.strategy.stages)
        return replica, world // spec.strategy.stages
    return rank, world


def prepare_environment(spec, device_type: str) -> None:
    """Before DeepSpeed is imported: on CPU it needs DS_ACCELERATOR=cpu (and then uses gloo)."""
    if spec.strategy.type == "deepspeed" and device_type != "cuda":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


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


def build_optimizer(training, parameters, device):
    params = [p for p in parameters if p.requires_grad]
    if training.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=training.learning_rate, momentum=0.9, weight_decay=training.weight_decay
        )
    return torch.optim.AdamW(
        params,
        lr=training.learning_rate,
        betas=tuple(training.adam_betas),
        weight_decay=training.weight_decay,
        fused=device.type == "cuda" or None,
    )


def build_scheduler(training, optimizer, total_steps: int):
    from transformers import get_scheduler

    warmup = (
        training.warmup_steps
        if training.warmup_steps is not None
        else int(training.warmup_ratio * total_steps)
    )
    name = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}[training.schedule]
    return get_scheduler(
        name, optimizer, num_warmup_steps=min(warmup, total_steps), num_training_steps=total_steps
    )


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _optimizer_bytes(optimizer) -> int:
    """Bytes of tensors in the optimizer's state (Adam moments, step counters) held by this rank."""
    total = 0
    for per_param in optimizer.state.values():
        for v in per_param.values():
            if torch.is_tensor(v):
                total += v.numel() * v.element_size()
    return total


def _zero_grad_bytes(stage: int, params) -> int:
    """Gradient bytes this rank keeps: all of them below ZeRO-2, its partition's from ZeRO-2 on."""
    trainable = [p for p in params if p.requires_grad]
    full = sum((p.ds_numel if hasattr(p, "ds_numel") else p.numel()) * p.element_size() for p in trainable)
    if stage < 2:
        return full
    world = dist.get_world_size() if dist.is_initialized() else 1
    return -(-full // world)
