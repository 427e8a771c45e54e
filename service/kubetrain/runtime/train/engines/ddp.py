"""Data parallel: torch DistributedDataParallel over the process group (the plain model in one process)."""

from __future__ import annotations

import contextlib

import torch

from .. import checkpoint as ckpt
from ..schedule import build_optimizer, build_scheduler
from .base import Engine, optimizer_bytes, register, tensor_bytes


@register("ddp")
class DDPEngine(Engine):
    """The model on its device, wrapped in DDP over two or more ranks (as ray.train.torch.prepare_model does);
    an optional GradScaler."""

    in_process = True

    def __init__(self, model, spec, total_steps: int, rank: int, world: int, device, rebuild=None, **kw):
        if kw.get("distributed", True):
            model = _wrap(model, world, device, getattr(spec.strategy, "find_unused_parameters", False))
        self.model = model
        self.inner = model.module if hasattr(model, "module") else model
        self.training, self.total_steps = spec.training, total_steps
        self.optimizer = build_optimizer(spec.training, self.model.parameters(), device)
        self.scheduler = build_scheduler(spec.training, self.optimizer, total_steps)
        self.scaler = torch.amp.GradScaler("cuda") if spec.training.precision == "fp16" else None

    def train_batch(self, batch, sync, accum, autocast):
        no_sync = sync or not hasattr(self.model, "no_sync")
        with contextlib.nullcontext() if no_sync else self.model.no_sync():
            with autocast():
                loss = self.objective(self.model, batch) / accum
            (self.scaler.scale(loss) if self.scaler else loss).backward()
        return loss.item()

    def step(self, max_grad_norm, norm=None):
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        if not max_grad_norm:
            norm = None
        elif norm is None:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_grad_norm)
        else:  # measured by the health check before this step: clip with it
            torch.nn.utils.clip_grads_with_norm_(self.model.parameters(), max_grad_norm, torch.tensor(norm))
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm) if norm is not None else None

    def save(self, directory, rank, st):
        ckpt.save(directory, rank, self.inner, self.optimizer, st)

    def load(self, directory, rank):
        st = ckpt.load(directory, rank, self.inner, self.optimizer)
        self.apply_hyperparameters(self.training, st.step)
        return st

    def memory(self):
        return {
            "param_bytes": tensor_bytes(self.inner.parameters()),
            "grad_bytes": tensor_bytes(p for p in self.inner.parameters() if p.requires_grad),
            "optimizer_bytes": optimizer_bytes(self.optimizer),
        }


def _wrap(model, world: int, device, find_unused_parameters: bool):
    """On this rank's device; in DistributedDataParallel when there is more than one rank."""
    model = model.to(device)
    if world < 2:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(
        model,
        device_ids=ids,
        output_device=ids[0] if ids else None,
        find_unused_parameters=find_unused_parameters,
    )
