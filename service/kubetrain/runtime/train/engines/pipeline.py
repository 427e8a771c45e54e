"""Pipeline x data parallel: a causal LM cut into stages by hand, run by torch.distributed.pipelining.

Layout: rank = replica * stages + stage, so one pipeline is `stages` consecutive ranks (consecutive Ray
workers share a node, and a pipeline talks every micro-batch while replicas talk once per optimizer step).
Stage 0 holds the embeddings, the last stage the final norm and the head; the decoder layers are split
evenly, earlier stages taking the remainder because the last one also runs the head and the loss. Layers a
rank does not own are replaced by parameterless placeholders, so parameter names stay those of the whole
model (checkpoints and whole_model() use them) while memory drops to about 1/stages.

Tied embeddings (GPT-2, SmolLM2): the last stage keeps its own copy of the shared matrix as the head; at
each accumulation boundary the two copies' gradients are summed over a (first, last) group, so both copies
take identical steps and equal the tied parameter of a single process; the norm counts it once.

Gradients equal those of one process accumulating over micro_batches x gradient_accumulation_steps
micro-batches: each micro-batch loss (transformers' token mean) is divided by micro_batches x accum and the
schedule is told not to rescale. Sequences are right-padded, so no stage needs an attention mask: real tokens
never attend to later positions; the sequence length is padded up to a multiple of PAD_TO so that a handful
of shapes (each a statically described PipelineStage + schedule, cached) covers every batch.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os

import torch
import torch.distributed as dist
from torch import nn

from ....spec import Problem, SpecError
from ....spec.strategy import pipeline_model_problems
from .. import checkpoint as ckpt
from ..schedule import build_optimizer, build_scheduler
from .base import Engine, kept_rng, optimizer_bytes, register, tensor_bytes
from .stages import StageModule, base_model, decoder, layout, stage_layers

IGNORE = -100
PAD_TO = 16  # sequence lengths are padded up to a multiple of this (few shapes, few cached schedules)
CACHED_SHAPES = 8  # (rows, length, train) combinations whose stage + schedule are kept
__all__ = ["PAD_TO", "PipelineEngine", "StageModule", "layout", "stage_layers"]


class PipelineModel(nn.Module):
    """What evaluate() calls: a forward-only pass of the pipeline; returns (loss, logits) on the last stage
    and None elsewhere. Every rank of a pipeline must call it with the same batch (they share a data shard)."""

    def __init__(self, engine: PipelineEngine):
        super().__init__()
        self.stage_module = engine.stage_module
        self._engine = [engine]  # a list: not a registered submodule

    def forward(self, input_ids, attention_mask=None, labels=None, **_):
        return self._engine[0].forward_only(input_ids, labels)


@register("pipeline")
class PipelineEngine(Engine):
    """This rank's stage of one pipeline replica; see the module docstring for the layout and the scaling."""

    takes_objective = False  # each stage's schedule computes transformers' loss itself

    @classmethod
    def data_shard(cls, spec, rank, world):
        """The stages of one replica read the same data."""
        replica, _ = layout(rank, world, spec.strategy.stages)
        return replica, world // spec.strategy.stages

    @classmethod
    def check_model(cls, spec, model_dir):
        """A local model's config.json: an architecture pipeline can split, enough decoder layers."""
        path = os.path.join(model_dir, "config.json") if model_dir else ""
        if not os.path.isfile(path):  # a model built from_config: validation has checked it
            return
        with open(path) as f:
            cfg = json.load(f)
        layers = cfg.get("num_hidden_layers", cfg.get("n_layer"))
        problems = pipeline_model_problems(spec.strategy, cfg.get("model_type"), layers)
        if problems:
            raise SpecError([Problem(".".join(("spec", *loc)), why) for loc, why, _ in problems])

    def __init__(self, model, spec, total_steps: int, rank: int, world: int, device, rebuild=None, **kw):
        from transformers.modeling_outputs import CausalLMOutput

        s = spec.strategy
        self.stages, self.micro, self.schedule_kind = s.stages, s.micro_batches, s.schedule
        if self.schedule_kind == "1f1b" and self.micro < self.stages:
            raise ValueError(
                f"strategy.micro_batches: the 1f1b schedule needs at least as many micro-batches as stages "
                f"({self.micro} < {self.stages}); raise micro_batches or use schedule: gpipe"
            )
        self.rank, self.world, self.device = rank, world, torch.device(device)
        self.replica, self.stage = layout(rank, world, self.stages)
        self.replicas = world // self.stages
        self.data_rank, self.data_world = self.replica, self.replicas
        self.is_first, self.is_last = self.stage == 0, self.stage == self.stages - 1
        self._rebuild = rebuild
        self._output = CausalLMOutput

        # Process groups: every rank creates every group, in the same order.
        S, R = self.stages, self.replicas
        self.pp_ranks = [self.replica * S + k for k in range(S)]
        self.pp = _groups([[r * S + k for k in range(S)] for r in range(R)], self.replica)
        self.dp = _groups([[r * S + k for r in range(R)] for k in range(S)], self.stage) if R > 1 else None
        tie_trains = self._split(model)
        # The last stage's copy of a tied matrix: its gradient is summed with the first stage's, counted once.
        self.tied_copy = self.stage_module.head.weight if (tie_trains and self.is_last) else None
        self.tie = _groups([[r * S, r * S + S - 1] for r in range(R)], self.replica) if tie_trains else None

        self.params = [p for p in self.inner.parameters() if p.requires_grad]
        self.training, self.total_steps = spec.training, total_steps
        self.optimizer = build_optimizer(spec.training, self.params, self.device)
        self.scheduler = build_scheduler(spec.training, self.optimizer, total_steps)
        self._hf_loss = base_model(model).loss_function
        self._scale = 1.0
        self._schedules: collections.OrderedDict = collections.OrderedDict()
        self.model = PipelineModel(self)

    def _split(self, model) -> bool:
        """Keep this stage's pieces of the model, drop the rest; True when a tied embedding is trained."""
        base = base_model(model)
        kind, dec = decoder(base)
        emb, head = base.get_input_embeddings(), base.get_output_embeddings()
        self.tied = head is not None and head.weight is emb.weight
        self.act_dtype = next(p.dtype for p in base.parameters() if p.is_floating_point())
        all_layers = dec.h if kind == "gpt2" else dec.layers
        self.layers = stage_layers(len(all_layers), self.stages)[self.stage]
        self.stage_module = StageModule(base, self.stage, self.stages, self.layers, self.act_dtype)
        for i in range(len(all_layers)):
            if i not in self.layers:
                all_layers[i] = nn.Identity()
        if not self.is_first:
            for name in ("wte", "wpe") if kind == "gpt2" else ("embed_tokens",):
                setattr(dec, name, None)
        if not self.is_last:
            setattr(dec, "ln_f" if kind == "gpt2" else "norm", None)
            base.lm_head = None
        self.inner = model.to(self.device)
        self.vocab = self.stage_module.head.out_features if self.is_last else None
        self.hidden = dec.config.hidden_size if hasattr(dec.config, "hidden_size") else dec.config.n_embd
        return self.tied and emb.weight.requires_grad

    # ---- schedules -------------------------------------------------------------------------------------

    def _schedule(self, rows: int, length: int, train: bool):
        """A PipelineStage + schedule for batches of this shape, described statically (no shape inference)."""
        from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

        key = (rows, length, train)
        if key in self._schedules:
            self._schedules.move_to_end(key)
            return self._schedules[key]
        n = self.micro if train else max(d for d in range(1, self.micro + 1) if rows % d == 0)
        mb = rows // n
        hidden = torch.empty(mb, length, self.hidden, dtype=self.act_dtype, device="meta").requires_grad_(
            True
        )
        inputs = torch.empty(mb, length, dtype=torch.long, device="meta") if self.is_first else hidden
        outputs = torch.empty(mb, length, self.vocab, device="meta") if self.is_last else hidden
        stage = PipelineStage(
            self.stage_module,
            self.stage,
            self.stages,
            self.device,
            input_args=inputs,
            output_args=outputs,
            group=self.pp,
        )
        if train:
            cls = Schedule1F1B if self.schedule_kind == "1f1b" else ScheduleGPipe
            sched = cls(stage, n, loss_fn=self._loss, scale_grads=False)
        else:
            sched = ScheduleGPipe(stage, n, loss_fn=None, scale_grads=False)
        self._schedules[key] = sched
        if len(self._schedules) > CACHED_SHAPES:  # every stage sees the same shapes, so evicts the same
            self._schedules.popitem(last=False)
        return sched

    def _loss(self, logits, labels):
        return self._hf_loss(logits, labels, vocab_size=logits.shape[-1]) * self._scale

    def _pad(self, input_ids, labels):
        length = input_ids.shape[1]
        padded = -(-length // PAD_TO) * PAD_TO
        if padded == length:
            return input_ids, labels
        input_ids = nn.functional.pad(input_ids, (0, padded - length), value=0)
        if labels is not None:
            labels = nn.functional.pad(labels, (0, padded - length), value=IGNORE)
        return input_ids, labels

    def _run(self, sched, input_ids, labels, losses=None, return_outputs=False):
        if self.is_first:
            return sched.step(input_ids, return_outputs=return_outputs)
        if self.is_last:
            return sched.step(target=labels, losses=losses, return_outputs=return_outputs)
        return sched.step(return_outputs=return_outputs)

    # ---- Engine ----------------------------------------------------------------------------------------

    def train_batch(self, batch, sync, accum, autocast):
        input_ids, labels = self._pad(batch["input_ids"], batch["labels"])
        rows = input_ids.shape[0]
        if rows % self.micro:
            raise ValueError(f"a batch of {rows} rows does not split into {self.micro} micro-batches")
        sched = self._schedule(rows, input_ids.shape[1], train=True)
        self._scale = 1.0 / (self.micro * accum)
        losses: list = []
        self.stage_module.autocast = autocast
        try:
            self._run(sched, input_ids, labels, losses)
        finally:
            self.stage_module.autocast = contextlib.nullcontext
        value = torch.tensor([sum(float(x) for x in losses)], dtype=torch.float64, device=self.device)
        dist.broadcast(value, group=self.pp, group_src=self.stages - 1)
        if sync:
            self._reduce_gradients()
        return float(value.item())

    def _reduce_gradients(self):
        """At the accumulation boundary: sum the tied copies' gradients, average over the replicas."""
        if self.tie is not None:
            w = self.tied_copy if self.is_last else base_model(self.inner).get_input_embeddings().weight
            if w.grad is None:
                w.grad = torch.zeros_like(w)
            dist.all_reduce(w.grad, group=self.tie)
        if self.dp is None:
            return
        grads = [p.grad for p in self.params if p.grad is not None]
        if not grads:
            return
        flat = torch._utils._flatten_dense_tensors(grads)
        dist.all_reduce(flat, group=self.dp)
        flat /= self.replicas
        for g, r in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
            g.copy_(r)

    def step(self, max_grad_norm, norm=None):  # norm: this rank's only; clipping needs all stages' (below)
        norm = None
        if max_grad_norm:
            counted = [p.grad for p in self.params if p.grad is not None and p is not self.tied_copy]
            local = torch.nn.utils.get_total_norm(counted) if counted else torch.zeros((), device=self.device)
            sq = (local.double() ** 2).reshape(1)
            dist.all_reduce(sq, group=self.pp)
            norm = sq.sqrt()[0]
            torch.nn.utils.clip_grads_with_norm_(self.params, max_grad_norm, norm.to(torch.float32))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm) if norm is not None else None

    @torch.no_grad()
    def forward_only(self, input_ids, labels=None):
        """Forward-only pipeline pass over a whole (eval) batch: CausalLMOutput on the last stage, else None."""
        length = input_ids.shape[1]
        padded, _ = self._pad(input_ids, None)
        sched = self._schedule(padded.shape[0], padded.shape[1], train=False)
        logits = self._run(sched, padded, None, return_outputs=True)
        if not self.is_last:
            return None
        logits = logits[:, :length].contiguous()
        loss = self._hf_loss(logits, labels, vocab_size=logits.shape[-1]) if labels is not None else None
        return self._output(loss=loss, logits=logits)

    # ---- checkpoints -----------------------------------------------------------------------------------

    def _file(self, directory: str) -> str:
        return os.path.join(directory, f"pipeline_stage{self.stage}of{self.stages}.pt")

    def trainable_state(self) -> dict:
        """This stage's trainable tensors under the whole model's names (the tied head copy left out)."""
        return {
            n: p.detach().cpu()
            for n, p in self.inner.named_parameters()
            if p.requires_grad and p is not self.tied_copy
        }

    def save(self, directory, rank, st):
        ckpt.save_position(directory, rank, st)
        if self.replica != 0:  # replicas hold identical stages
            return
        weights = {n: p.detach().cpu() for n, p in self.inner.named_parameters() if p.requires_grad}
        torch.save({"weights": weights, "optimizer": self.optimizer.state_dict()}, self._file(directory))

    def load(self, directory, rank):
        path = self._file(directory)
        if not os.path.exists(path):
            raise RuntimeError(
                f"no checkpoint of pipeline stage {self.stage} of {self.stages} under {directory}"
            )
        state = torch.load(path, weights_only=False, map_location=self.device)
        result = self.inner.load_state_dict(state["weights"], strict=False)
        if result.unexpected_keys:
            raise RuntimeError(
                f"checkpoint of stage {self.stage} has unknown tensors: {result.unexpected_keys[:5]}"
            )
        self.optimizer.load_state_dict(state["optimizer"])
        st = ckpt.load_position(directory, rank)
        self.apply_hyperparameters(self.training, st.step)
        return st

    @contextlib.contextmanager
    def whole_model(self):
        """Collective: gather every stage's trainable tensors into a freshly built whole model on every rank."""
        if self._rebuild is None:
            raise RuntimeError(
                "PipelineEngine.whole_model needs rebuild= (a function building the whole model)"
            )
        parts: list = [None] * self.world
        dist.all_gather_object(parts, self.trainable_state() if self.replica == 0 else {})
        merged = {k: v for part in parts for k, v in part.items()}
        with kept_rng():
            full = self._rebuild()
        wanted = {n for n, p in full.named_parameters() if p.requires_grad}
        if wanted != set(merged):
            raise RuntimeError(
                f"gathered stages do not match the whole model: missing {sorted(wanted - set(merged))[:5]}, "
                f"unknown {sorted(set(merged) - wanted)[:5]}"
            )
        full.load_state_dict(merged, strict=False)
        full.to(self.device)
        try:
            yield full
        finally:
            del full

    def memory(self):
        return {
            "param_bytes": tensor_bytes(self.inner.parameters()),
            "grad_bytes": tensor_bytes(self.params),
            "optimizer_bytes": optimizer_bytes(self.optimizer),
        }


def _groups(rank_lists: list[list[int]], mine: int):
    """dist.new_group for every list (a collective: all ranks, same order); returns the mine-th."""
    out = [dist.new_group(ranks) for ranks in rank_lists]
    return out[mine]
