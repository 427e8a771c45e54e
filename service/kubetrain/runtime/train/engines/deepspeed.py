"""DeepSpeed ZeRO (stages 0-3, optional CPU offload): the engine and the DeepSpeed config it is built from."""

from __future__ import annotations

import contextlib
import copy
import os

import torch.distributed as dist

from ....spec.strategy import deepspeed_fixed, deepspeed_overrides
from .. import checkpoint as ckpt
from ..schedule import build_scheduler, set_hyperparameters
from .base import Engine, kept_rng, optimizer_bytes, register, tensor_bytes

DEFAULTS = {"steps_per_print": 10**9, "wall_clock_breakdown": False, "zero_allow_untested_optimizer": True}


def deepspeed_config(spec, gpu: bool | None = None) -> dict:
    """What the spec fixes (spec/strategy.py checks overrides against it), what this machine needs, the
    user's strategy.config merged over both; ValueError naming `strategy.config.<key>` for a contradiction."""
    gpu = spec.resources.gpus_per_worker > 0 if gpu is None else gpu
    s = spec.strategy
    config = copy.deepcopy(deepspeed_fixed(spec))
    zero = config["zero_optimization"]
    for key in ("offload_optimizer", "offload_param"):
        if key in zero:
            zero[key]["pin_memory"] = gpu
    if s.stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    if config["optimizer"]["type"] == "AdamW":
        # torch's AdamW: no compiled DeepSpeed op needed; fused kernels on GPU, the foreach path on CPU.
        config["optimizer"]["params"].update(eps=1e-8, torch_adam=True, fused=gpu)
    if s.offload_optimizer == "cpu" and not gpu:
        # DeepSpeedCPUAdam needs a compiled op; on a CPU accelerator torch's AdamW already runs on the CPU.
        config["zero_force_ds_cpu_optimizer"] = False
    return deepspeed_overrides(spec, {**DEFAULTS, **config})


@register("deepspeed")
class DeepSpeedEngine(Engine):
    """A DeepSpeed engine built from deepspeed_config; it owns accumulation and clipping."""

    TAG = "deepspeed"

    @classmethod
    def prepare_environment(cls, spec, device_type):
        if device_type != "cuda":  # read when deepspeed is imported: on CPU it then uses gloo
            os.environ.setdefault("DS_ACCELERATOR", "cpu")

    def __init__(self, model, spec, total_steps: int, rank: int, world: int, device, rebuild=None, **kw):
        import deepspeed

        self.config = deepspeed_config(spec, gpu=device.type == "cuda")
        self.stage = spec.strategy.stage
        self.training, self.total_steps = spec.training, total_steps
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
        loss = self.objective(
            self.model, batch
        )  # DeepSpeed handles bf16 itself; backward divides by accumulation
        self.model.backward(loss)
        self.model.step()  # a no-op for the optimizer until the accumulation boundary
        return loss.item() / accum

    def step(self, max_grad_norm, norm=None):  # DeepSpeed clipped and stepped inside train_batch
        norm = self.model.get_global_grad_norm()
        return float(norm) if norm is not None else None

    def save(self, directory, rank, st):
        # Every rank writes its shard (distinct file names), so Ray's per-rank uploads merge into one checkpoint.
        self.model.save_checkpoint(directory, tag=self.TAG, save_latest=False)
        ckpt.save_position(directory, rank, st)

    def load(self, directory, rank):
        path, _ = self.model.load_checkpoint(directory, tag=self.TAG, load_lr_scheduler_states=False)
        if path is None:
            raise RuntimeError(f"no DeepSpeed checkpoint under {directory}/{self.TAG}")
        st = ckpt.load_position(directory, rank)
        self.apply_hyperparameters(self.training, st.step)
        return st

    def apply_hyperparameters(self, training, step=None):
        # The schedule drives the optimizer DeepSpeed wraps (the one it handed to lr_scheduler above).
        step = self.scheduler.last_epoch if step is None else step
        basic = self.model.basic_optimizer
        set_hyperparameters(basic, training)
        self.scheduler = build_scheduler(training, basic, self.total_steps, step)
        self.model.lr_scheduler = self.scheduler

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
        params = list(self.inner.parameters())
        if self.stage == 3:  # ds_tensor is this rank's partition; p.data is an empty placeholder
            param_bytes = sum(
                p.ds_tensor.numel() * p.ds_tensor.element_size() for p in params if hasattr(p, "ds_tensor")
            )
        else:
            param_bytes = tensor_bytes(params)
        opt = self.optimizer
        return {
            "param_bytes": param_bytes,
            "grad_bytes": _zero_grad_bytes(self.stage, params),
            "optimizer_bytes": optimizer_bytes(getattr(opt, "optimizer", opt)),
        }


def _zero_grad_bytes(stage: int, params) -> int:
    """Gradient bytes this rank keeps: all of them below ZeRO-2, its partition's from ZeRO-2 on."""
    trainable = [p for p in params if p.requires_grad]
    full = sum((p.ds_numel if hasattr(p, "ds_numel") else p.numel()) * p.element_size() for p in trainable)
    if stage < 2:
        return full
    world = dist.get_world_size() if dist.is_initialized() else 1
    return -(-full // world)
