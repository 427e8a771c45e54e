"""The training recipe each Ray Train worker runs, top to bottom: set up, (resume), train, evaluate, save."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
import time

import torch
import torch.distributed as dist

from ..spec import TrainingJob
from . import data as data_mod
from . import state as ckpt
from . import storage
from .channel import Channel
from .engines import data_shard, kept_rng, make_engine, prepare_environment
from .evaluate import evaluate, exact_match
from .models import apply_peft, build_model, build_tokenizer, count_parameters, resolve_model_dir


def train_loop_per_worker(config: dict) -> None:
    """Entry point for ray.train.torch.TorchTrainer; config carries the resolved job and local paths."""
    import ray.train
    import ray.train.torch as rt

    job = TrainingJob.model_validate(config["job"])
    spec = job.spec
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = rt.get_device()
    channel = Channel(config.get("queue"), enabled=rank == 0)
    phases = _Phases()
    _quiet()
    _seed(spec.training.seed)

    # Data and model
    splits = data_mod.load_splits(spec.data, spec.training.seed, config["cache_dir"])
    phases.mark("load_data")
    model_dir = config.get("model_dir")
    if model_dir is None and spec.model.name_or_path:  # in a cluster each node resolves (and caches) its copy
        model_dir = resolve_model_dir(spec.model, config["models_dir"])
    texts = (
        str(r[spec.data.fields.text])
        if spec.data.format in ("text", "classification")
        else json.dumps(r, default=str)
        for r in splits.train
    )
    tokenizer = build_tokenizer(spec.model, model_dir, texts)
    classification = spec.task == "sequence_classification"

    def rebuild():
        """The model as built here, from the same seed (a whole copy for engines that split or shard it)."""
        with kept_rng():
            _seed(spec.training.seed)
            m = build_model(
                spec.model,
                model_dir,
                tokenizer,
                spec.task,
                num_labels=len(splits.label_names) if splits.label_names else None,
            )
            m = apply_peft(m, spec.peft, spec.task)
        return m.to(device)

    model = rebuild()
    phases.mark("build_model")
    if spec.training.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    trainable, total = count_parameters(model)
    channel.emit("model", trainable=trainable, total=total, model_class=type(model).__name__)
    train_ds = data_mod.tokenize(splits.train, spec.data, tokenizer, splits.label_names)
    val_ds = data_mod.tokenize(splits.validation, spec.data, tokenizer, splits.label_names)
    collate = data_mod.collate(tokenizer, classification)
    phases.mark("tokenize")
    shard, shards = data_shard(spec, rank, world)
    sampler = torch.utils.data.DistributedSampler(
        train_ds, num_replicas=shards, rank=shard, shuffle=True, seed=spec.training.seed, drop_last=True
    )
    bs, accum = spec.training.batch_size, spec.training.gradient_accumulation_steps
    micro_per_epoch = len(sampler) // bs
    if micro_per_epoch < accum:
        raise ValueError(
            f"spec.training.batch_size: {len(train_ds)} training examples over {shards} data-parallel workers "
            "give fewer than "
            f"one optimizer step per epoch (batch_size {bs} x gradient_accumulation_steps {accum})"
        )
    steps_per_epoch = micro_per_epoch // accum
    total_steps = spec.training.max_steps or max(1, math.ceil(spec.training.epochs * steps_per_epoch))
    val_loader = None
    if val_ds is not None and len(val_ds):
        val_sampler = torch.utils.data.DistributedSampler(
            val_ds, num_replicas=shards, rank=shard, shuffle=False
        )
        val_loader = torch.utils.data.DataLoader(
            val_ds,
            batch_size=bs,
            sampler=val_sampler,
            collate_fn=collate,
            generator=_own_generator(spec.training.seed),
        )

    prepare_environment(spec, device.type)
    engine = make_engine(model, spec, total_steps, rank, world, device, rebuild)
    autocast = _autocast(spec.training.precision, device)
    phases.mark("prepare_" + spec.strategy.type)

    # Resume: this run's own checkpoint, else one handed over (a sweep trial taking another's place)
    st = ckpt.TrainState(spec_fingerprint=_spec_fingerprint(job))
    resumed = ray.train.get_checkpoint() if spec.checkpoint.resume else None
    if resumed is None and config.get("init_checkpoint"):
        resumed = ray.train.Checkpoint(config["init_checkpoint"])
    if resumed is not None:
        with resumed.as_directory() as d:
            st = engine.load(d, rank)
        engine.apply_hyperparameters(spec.training)
        if st.spec_fingerprint and st.spec_fingerprint != _spec_fingerprint(job):
            raise RuntimeError(
                "the checkpoint of job '%s' was written by a different model/data/peft spec; rename the job "
                "(metadata.name) or set spec.checkpoint.resume: false" % job.name
            )
        channel.emit("resumed", step=st.step, path=resumed.path)

    fmt = data_mod.Formatter(spec.data, tokenizer) if spec.data.format in ("instruction", "chat") else None
    gen = spec.evaluation.generation
    gen_records = (
        list(splits.validation.select(range(min(gen.examples, len(splits.validation)))))
        if gen and splits.validation is not None
        else []
    )

    def run_eval(tag: str) -> dict:
        metrics = {}
        if val_loader is not None and tag != "final":  # the last periodic eval already has the final loss
            metrics = evaluate(
                engine.model, val_loader, spec.task, device, autocast, spec.training.eval_batches
            )
        if gen_records and tag in ("before", "final"):
            with engine.whole_model() as whole:
                em, samples = exact_match(
                    whole,
                    tokenizer,
                    fmt,
                    gen_records,
                    rank,
                    world,
                    device,
                    gen.max_new_tokens,
                    gen.batch_size,
                )
            metrics["eval_exact_match"] = em
            channel.emit("samples", tag=tag, samples=samples)
        return metrics

    phases.mark("resume")
    if st.step == 0 and resumed is None:
        before = run_eval("before")
        channel.emit("eval", step=0, tag="before", metrics=before)
        phases.mark("eval_before")

    # Train
    channel.emit(
        "start",
        total_steps=total_steps,
        step=st.step,
        world_size=world,
        validation_examples=len(splits.validation) if splits.validation is not None else 0,
        global_batch=bs * accum * shards,
        steps_per_epoch=steps_per_epoch,
        setup_seconds=phases.done,
        placement_group=ray.get_runtime_context().get_placement_group_id(),
    )
    fault_step = int(os.environ.get("KUBETRAIN_FAULT_AT_STEP", "0"))
    memory_reported = False
    engine.model.train()
    window_t, window_samples, window_tokens, loss_acc = time.perf_counter(), 0, 0, []
    eval_every = spec.training.eval_every or steps_per_epoch
    ckpt_every = spec.checkpoint.every or eval_every
    while st.step < total_steps and not st.stopped_early:
        sampler.set_epoch(st.epoch)
        indices = list(sampler)[st.batch_in_epoch * bs : steps_per_epoch * accum * bs]
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(train_ds, indices),
            batch_size=bs,
            shuffle=False,
            collate_fn=collate,
            generator=_own_generator(spec.training.seed + st.epoch),
        )
        micro = 0
        for batch in loader:
            micro += 1
            st.batch_in_epoch += 1
            batch = {k: v.to(device) for k, v in batch.items()}
            sync = micro % accum == 0
            loss_acc.append(engine.train_batch(batch, sync, accum, autocast))
            window_samples += batch["input_ids"].shape[0]
            window_tokens += int(batch["attention_mask"].sum())
            if not sync:
                continue
            grad_norm = engine.step(spec.training.max_grad_norm)
            if not memory_reported:  # after the first step: optimizers create their state lazily
                memory_reported = True
                channel.emit("memory", strategy=spec.strategy.type, ranks=_gather_memory(engine.memory()))
            st.step += 1
            if fault_step and st.step == fault_step and rank == world - 1:
                _inject_fault()
            if st.step % spec.training.log_every == 0 or st.step == total_steps:
                now = time.perf_counter()
                metrics = {
                    "train_loss": _mean_over_ranks(sum(loss_acc)),
                    "learning_rate": engine.lr(),
                    "samples_per_second": window_samples * shards / (now - window_t),
                    "tokens_per_second": window_tokens * shards / (now - window_t),
                    "epoch": st.epoch + st.batch_in_epoch / (steps_per_epoch * accum),
                }
                if grad_norm is not None:
                    metrics["grad_norm"] = float(grad_norm)
                metrics.update(channel.system_metrics())
                channel.emit("step", step=st.step, metrics=metrics)
                window_t, window_samples, window_tokens = now, 0, 0
            loss_acc = []
            last = st.step >= total_steps
            evaluated = {}
            if st.step % eval_every == 0 or last:
                evaluated = run_eval("periodic")
                channel.emit("eval", step=st.step, tag="periodic", metrics=evaluated)
                _early_stopping(spec, st, evaluated)
                if spec.checkpoint.keep_best and st.best_step == st.step:
                    info = {"step": st.step, "metric": _watched(spec), "value": st.best_metric}
                    _publish_model(
                        engine, rank, tokenizer, config["best_dir"], info=info, mirror=_mirror(config, "best")
                    )
            if st.step % ckpt_every == 0 or last or st.stopped_early:
                _checkpoint(rank, engine, st, evaluated)
            if last or st.stopped_early:
                break
        else:
            st.epoch += 1
            st.batch_in_epoch = 0

    final = run_eval("final") if gen_records else {}
    if final:
        channel.emit("eval", step=st.step, tag="final", metrics=final)
    if st.stopped_early:
        channel.emit("stopped_early", step=st.step, best_step=st.best_step, best_metric=st.best_metric)
    _publish_model(
        engine,
        rank,
        tokenizer,
        config["final_dir"],
        merge=getattr(spec.peft, "merge_on_save", False),
        info={"step": st.step, "job": job.name, "strategy": spec.strategy.type},
        mirror=_mirror(config, "final"),
    )
    if rank == 0:
        channel.emit("final", path=config["final_dir"], step=st.step)
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


class _Phases:
    """Wall time of each set-up phase on this worker (shown with KUBETRAIN_VERBOSE=1, kept in MLflow tags)."""

    def __init__(self):
        self.t = time.perf_counter()
        self.done: dict[str, float] = {}

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        self.done[name] = round(now - self.t, 2)
        self.t = now


def _watched(spec) -> str:
    """The validation metric that defines 'best': the early-stopping metric, else eval_loss."""
    es = spec.training.early_stopping
    name = es.metric if es else "eval_loss"
    return name if name.startswith("eval_") else "eval_" + name


def _early_stopping(spec, st: ckpt.TrainState, metrics: dict) -> None:
    es = spec.training.early_stopping
    name = _watched(spec)
    if name not in metrics:
        return
    value, mode, delta = metrics[name], (es.mode if es else "min"), (es.min_delta if es else 0.0)
    better = st.best_metric is None or (
        value < st.best_metric - delta if mode == "min" else value > st.best_metric + delta
    )
    if better:
        st.best_metric, st.best_step, st.evals_without_improvement = value, st.step, 0
    else:
        st.evals_without_improvement += 1
        if es and st.evals_without_improvement >= es.patience:
            st.stopped_early = True


def _checkpoint(rank, engine, st: ckpt.TrainState, metrics: dict) -> None:
    """All ranks report (a barrier); each contributes its files (RNG, and its shard where the engine shards)."""
    import ray.train

    with tempfile.TemporaryDirectory(prefix="kubetrain-ckpt-") as tmp:
        engine.save(tmp, rank, st)
        report = {"step": st.step, **{k: float(v) for k, v in metrics.items()}}
        ray.train.report(
            report,
            checkpoint=ray.train.Checkpoint.from_directory(tmp),
            checkpoint_dir_name=f"checkpoint_{st.step:08d}",
        )


def _publish_model(
    engine,
    rank: int,
    tokenizer,
    dest: str,
    merge: bool = False,
    info: dict | None = None,
    mirror: str | None = None,
) -> None:
    """Collective: the whole model gathered by the engine; rank 0 writes it (see _write_model), and copies it
    to `mirror` in the job's remote storage, where a driver on another node finds it."""
    with engine.whole_model() as whole:
        if rank == 0:
            _write_model(whole, tokenizer, dest, merge, info)
            if mirror:
                storage.upload_dir(dest, mirror)


def _mirror(config: dict, leaf: str) -> str | None:
    root = config.get("publish_root")
    return storage.join(root, leaf) if root else None


def _write_model(model, tokenizer, dest: str, merge: bool = False, info: dict | None = None) -> None:
    """The adapter (or full model) and tokenizer, written to a temp dir beside dest and renamed into place,
    so dest is always either the previous complete copy or the new complete copy."""
    import shutil

    parent = os.path.dirname(dest)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="." + os.path.basename(dest) + "-", dir=parent)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if info:
        with open(os.path.join(tmp, "kubetrain_model.json"), "w") as f:
            json.dump(info, f)
    if merge:
        merged = model.merge_and_unload()
        merged.save_pretrained(os.path.join(tmp, "merged"))
        tokenizer.save_pretrained(os.path.join(tmp, "merged"))
    old = None
    if os.path.exists(dest):
        old = tempfile.mkdtemp(prefix="." + os.path.basename(dest) + "-old-", dir=parent)
        os.replace(dest, os.path.join(old, "x"))
    os.replace(tmp, dest)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def _mean_over_ranks(value: float) -> float:
    """The step's loss over the whole global batch, not just rank 0's share of it."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return t.item() / dist.get_world_size()


def _gather_memory(mine: dict) -> list[dict]:
    """Every rank's parameter / gradient / optimizer-state bytes, in rank order."""
    if not (dist.is_available() and dist.is_initialized()):
        return [mine]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, mine)
    return out


def _autocast(precision: str, device):
    if precision == "fp32":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    if device.type == "cuda" and precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise RuntimeError("spec.training.precision: bf16 is not supported by this GPU; use fp16 or fp32")
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def _own_generator(seed: int) -> torch.Generator:
    """DataLoaders draw a base seed from the global RNG per iterator unless given their own generator;
    that draw would shift dropout after a resume (which re-creates the loader mid-epoch)."""
    return torch.Generator().manual_seed(seed)


def _seed(seed: int) -> None:
    from transformers import set_seed

    set_seed(seed)


def _spec_fingerprint(job: TrainingJob) -> str:
    s = job.spec
    keep = {
        "model": s.model.model_dump(),
        "peft": s.peft.model_dump(),
        "task": s.task,
        "data": s.data.model_dump(),
        "strategy": s.strategy.model_dump(),
    }
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _inject_fault() -> None:
    """Test hook: the last rank dies once at KUBETRAIN_FAULT_AT_STEP (a marker file makes it once only).

    It dies a few seconds after that step, as a real fault would, rather than within milliseconds of the
    previous report: Ray's controller registers reported checkpoints asynchronously.
    """
    marker = os.environ.get("KUBETRAIN_FAULT_MARKER", "")
    if marker and os.path.exists(marker):
        return
    if marker:
        open(marker, "w").close()
    time.sleep(float(os.environ.get("KUBETRAIN_FAULT_DELAY_S", "3")))
    os._exit(17)


def _quiet() -> None:
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("torch.distributed").setLevel(logging.ERROR)
