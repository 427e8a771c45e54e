"""The training recipe every worker runs, top to bottom: set up, resume, train, evaluate, checkpoint, publish.

One Recipe serves every place a run trains: a Ray Train worker group (train_loop_per_worker), a local
process group without Ray (train_in_group) and this process alone (train_in_process, used for sweep trials
of one worker); train/session.py hides which.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time

import torch

from ...spec import TrainingJob
from .. import contract as ev
from .. import storage
from ..contract import WorkerConfig
from . import checkpoint as ckpt
from . import class_weights, health, init_from, progress
from . import data as data_mod
from .baselines import baselines_event
from .channel import Channel
from .dpo import DPOObjective, Reference, evaluate_pairs
from .engines import check_in_process, engine_class, kept_rng, make_engine
from .evaluate import evaluate, exact_match
from .models import (
    apply_peft,
    build_model,
    build_tokenizer,
    continue_adapter,
    count_parameters,
    resolve_model_dir,
)
from .preference import PreferenceFormatter, tokenize_splits
from .publish import publish_model
from .quantize import quantization_for
from .session import GroupSession, LocalSession, RaySession, process_group_backend


def train_loop_per_worker(config: WorkerConfig) -> None:
    """Entry point for ray.train.torch.TorchTrainer; config carries the resolved job and local paths."""
    Recipe(config, RaySession(config.init_checkpoint)).run()


def train_in_process(
    config: WorkerConfig,
    storage_path: str,
    run_name: str,
    keep_last: int | None,
    handshake: ev.Handshake | None = None,
) -> None:
    """The same recipe in this process (world size 1, no process group, cpu or cuda:0), checkpointing to
    <storage_path>/<run_name>/checkpoint_<step:08d>; raises when training fails. With a handshake, the
    driver in this process paces it at each evaluation and can stop it (contract.RunStopped)."""
    spec = TrainingJob.model_validate(config.job).spec
    check_in_process(spec)
    root = storage.join(storage_path, run_name)
    gpus = spec.resources.gpus_per_worker > 0
    session = LocalSession(root, keep_last, config.init_checkpoint, gpus=gpus, handshake=handshake)
    Recipe(config, session).run()


def train_in_group(config: WorkerConfig) -> None:
    """Entry point for a process of a local process group (train/group_worker.py), checkpointing to
    <storage>/<run name>/checkpoint_<step:08d> like Ray Train; raises when training fails."""
    import torch.distributed as dist

    job = TrainingJob.model_validate(config.job)
    spec = job.spec
    root = storage.join(spec.checkpoint.storage, job.name)
    gpus, backend = spec.resources.gpus_per_worker > 0, process_group_backend(spec)
    session = GroupSession(
        root, spec.checkpoint.keep_last, config.init_checkpoint, gpus=gpus, backend=backend
    )
    try:
        Recipe(config, session).run()
    finally:
        dist.destroy_process_group()


class Recipe:
    """One run of a TrainingJob on this rank; run() is the whole story, each method one chapter."""

    def __init__(self, config: WorkerConfig, session):
        self.config, self.session = config, session
        self.job = TrainingJob.model_validate(config.job)
        self.spec = self.job.spec
        self.rank, self.world, self.device = session.rank, session.world, session.device
        self.channel = Channel(config.queue, enabled=self.rank == 0)
        self.phases = progress.Phases()
        self.st = ckpt.TrainState(spec_fingerprint=_spec_fingerprint(self.job))
        self.resumed = False
        self.predictions: dict = {}  # classification: the last evaluation's labels and probabilities

    def run(self) -> None:
        self.setup()
        self.resume()
        if not self.resumed:
            self.channel.emit(ev.Evaluated(step=0, tag="before", metrics=self.evaluate("before")))
            self.phases.mark("eval_before")
        self.train()
        if not self.unhealthy:  # stopped on a NaN: nothing from the bad state is evaluated or published
            self.finish()

    # ---- set-up --------------------------------------------------------------------------------------

    def setup(self) -> None:
        _quiet()
        _seed(self.spec.training.seed)
        self.phases.mark("import_libraries")  # transformers' set_seed imports peft, and with it most of torch
        self._setup_data()
        self._setup_classification()
        self._setup_model()
        self._setup_loaders()
        self._setup_engine()

    def _setup_data(self) -> None:
        spec, config = self.spec, self.config
        self.splits = data_mod.load_splits(spec.data, spec.training.seed, config.cache_dir)
        self.class_weights = self._class_weights()
        self.phases.mark("load_data")
        self.model_dir = config.model_dir
        if self.model_dir is None and spec.model.name_or_path:  # in a cluster each node resolves its copy
            self.model_dir = resolve_model_dir(spec.model, config.models_dir)
        # model.init_from: an adapter to continue on this base, or a whole model in place of name_or_path
        self.init_dir, self.init_kind = init_from.resolve(
            spec.model, spec.checkpoint.storage, config.models_dir
        )
        if self.init_kind == "model":
            self.model_dir = self.init_dir
        engine_class(spec).check_model(spec, self.model_dir)
        texts = (
            str(r[spec.data.fields.text])
            if spec.data.format in ("text", "classification")
            else json.dumps(r, default=str)
            for r in self.splits.train
        )
        self.tokenizer = build_tokenizer(spec.model, self.model_dir, texts)
        self.formatter = (
            data_mod.Formatter(spec.data, self.tokenizer)
            if spec.data.format in ("instruction", "chat")
            else PreferenceFormatter(spec.data, self.tokenizer)
            if spec.data.format == "preference"
            else None
        )
        gen, val = spec.evaluation.generation, self.splits.validation
        self.gen_records = (
            list(val.select(range(min(gen.examples, len(val))))) if gen and val is not None else []
        )

    def _build(self) -> torch.nn.Module:
        """The model as built here, from the same seed (a whole copy for engines that split or shard it)."""
        spec, labels = self.spec, self.splits.label_names
        with kept_rng():
            _seed(spec.training.seed)
            m = build_model(
                spec.model,
                self.model_dir,
                self.tokenizer,
                spec.task,
                num_labels=len(labels) if labels else None,
                quantization=quantization_for(spec, self.device),
            )
            if self.init_kind == "adapter":
                m = continue_adapter(m, self.init_dir, spec.peft, keep_reference=spec.task == "dpo")
            else:
                m = apply_peft(m, spec.peft, spec.task)
        return m.to(self.device)

    def _setup_model(self) -> None:
        spec = self.spec
        self.model = self._build()
        self.phases.mark("build_model")
        if spec.training.gradient_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        trainable, total = count_parameters(self.model)
        self.channel.emit(
            ev.ModelBuilt(model_class=type(self.model).__name__, trainable=trainable, total=total)
        )
        labels = self.splits.label_names
        if (
            spec.task == "dpo"
        ):  # preference pairs; the frozen reference is taken before an engine wraps the model
            self.train_ds, self.val_ds, self.collate = tokenize_splits(self.splits, spec.data, self.tokenizer)
            self.dpo = DPOObjective(spec.dpo, Reference(self.model))
        else:
            self.train_ds = data_mod.tokenize(self.splits.train, spec.data, self.tokenizer, labels)
            self.val_ds = data_mod.tokenize(self.splits.validation, spec.data, self.tokenizer, labels)
            self.collate = data_mod.collate(self.tokenizer, spec.task == "sequence_classification")
        self.phases.mark("tokenize")

    def _setup_loaders(self) -> None:
        spec, t = self.spec, self.spec.training
        shard, self.shards = engine_class(spec).data_shard(spec, self.rank, self.world)
        self.sampler = torch.utils.data.DistributedSampler(
            self.train_ds, num_replicas=self.shards, rank=shard, shuffle=True, seed=t.seed, drop_last=True
        )
        bs, accum = t.batch_size, t.gradient_accumulation_steps
        micro_per_epoch = len(self.sampler) // bs
        if micro_per_epoch < accum:
            raise ValueError(
                f"spec.training.batch_size: {len(self.train_ds)} training examples over {self.shards} "
                "data-parallel workers give fewer than "
                f"one optimizer step per epoch (batch_size {bs} x gradient_accumulation_steps {accum})"
            )
        self.steps_per_epoch = micro_per_epoch // accum
        self.total_steps = t.max_steps or max(1, math.ceil(t.epochs * self.steps_per_epoch))
        self.val_loader = None
        if self.val_ds is not None and len(self.val_ds):
            self.val_loader = torch.utils.data.DataLoader(
                self.val_ds,
                batch_size=bs,
                sampler=torch.utils.data.DistributedSampler(
                    self.val_ds, num_replicas=self.shards, rank=shard, shuffle=False
                ),
                collate_fn=self.collate,
                generator=_own_generator(t.seed),
            )

    def _setup_engine(self) -> None:
        spec = self.spec
        engine_class(spec).prepare_environment(spec, self.device.type)
        self.engine = make_engine(
            self.model, spec, self.total_steps, self.session, self._build, objective=self._objective()
        )
        self.autocast = _autocast(spec.training.precision, self.device)
        self.phases.mark("prepare_" + spec.strategy.type)

    def _objective(self):
        """What training minimises when it is not the model's own loss (train/objective.py); None keeps it."""
        if self.class_weights is not None:
            return class_weights.WeightedCrossEntropy(self.class_weights)
        return self.dpo if self.spec.task == "dpo" else None

    def _class_weights(self) -> list[float] | None:
        """training.class_weights resolved on the training split (one per label id), logged as params."""
        setting, names = self.spec.training.class_weights, self.splits.label_names
        if setting is None or not names:
            return None
        labels = self.splits.train[self.spec.data.fields.label]
        weights = class_weights.resolve(setting, labels, names)
        if self.rank == 0:
            self.channel.emit(ev.Params(params=class_weights.as_params(weights, names)))
        return weights

    def _setup_classification(self) -> None:
        """Classification: a threshold needs two classes; the baselines the model must beat (rank 0 only)."""
        spec, names = self.spec, self.splits.label_names or []
        if spec.task != "sequence_classification":
            return
        if spec.evaluation.threshold is not None and len(names) != 2:
            raise ValueError(
                f"spec.evaluation.threshold applies to two classes; the training data has {len(names)}: {names}"
            )
        if self.rank == 0:
            f = spec.data.fields
            event = baselines_event(self.splits, f.text, f.label, spec.training.seed)
            if event is not None:
                self.channel.emit(event)

    def _emit_predictions(self) -> None:
        """Classification: the final model's validation predictions, for the driver's report. The last periodic
        evaluation scored the final model; when it saw only eval_batches of it, or none ran (resumed at the
        end), one full pass now (collective)."""
        spec = self.spec
        if spec.task != "sequence_classification" or self.val_loader is None:
            return
        if not self.predictions or spec.training.eval_batches is not None:
            model, task = self.engine.model, spec.task
            evaluate(model, self.val_loader, task, self.device, self.autocast, predictions=self.predictions)
        if self.rank == 0:
            names = list(self.splits.label_names or [])
            self.channel.emit(ev.Predictions(step=self.st.step, label_names=names, **self.predictions))

    # ---- resume --------------------------------------------------------------------------------------

    def resume(self) -> None:
        """This run's own checkpoint, else one handed over (a sweep trial taking another's place)."""
        with self.session.resume_from(self.spec.checkpoint.resume) as found:
            if found is not None:
                directory, path = found
                self.st = self.engine.load(directory, self.rank)  # the schedule too, at the loaded step
                self.resumed = True
        if self.resumed:
            if self.st.spec_fingerprint and self.st.spec_fingerprint != _spec_fingerprint(self.job):
                raise RuntimeError(
                    "the checkpoint of job '%s' was written by a different model/data/peft spec; rename the "
                    "job (metadata.name) or set spec.checkpoint.resume: false" % self.job.name
                )
            self.channel.emit(ev.Resumed(step=self.st.step, path=path))
        self.phases.mark("resume")

    # ---- training ------------------------------------------------------------------------------------

    def train(self) -> None:
        spec, t, st = self.spec, self.spec.training, self.st
        self.channel.emit(
            ev.Started(
                total_steps=self.total_steps,
                step=st.step,
                world_size=self.world,
                validation_examples=len(self.splits.validation) if self.splits.validation is not None else 0,
                global_batch=t.batch_size * t.gradient_accumulation_steps * self.shards,
                steps_per_epoch=self.steps_per_epoch,
                setup_seconds=self.phases.done,
                placement_group=self.session.placement_group(),
            )
        )
        self.fault_step = int(os.environ.get("KUBETRAIN_FAULT_AT_STEP", "0"))
        self.unhealthy = False
        self.check_grads = t.precision != "fp16"  # fp16 loss scaling skips overflowing steps by design
        self.memory_reported = False
        self.eval_every = t.eval_every or self.steps_per_epoch
        self.ckpt_every = spec.checkpoint.every or self.eval_every
        self.engine.model.train()
        self.window = _Window()
        while st.step < self.total_steps and not st.stopped_early:
            if self._train_epoch():
                break
            st.epoch += 1
            st.batch_in_epoch = 0

    def _train_epoch(self) -> bool:
        """The rest of the current epoch; True when training is over (last step, or stopped early)."""
        t, st = self.spec.training, self.st
        bs, accum = t.batch_size, t.gradient_accumulation_steps
        self.sampler.set_epoch(st.epoch)
        indices = list(self.sampler)[st.batch_in_epoch * bs : self.steps_per_epoch * accum * bs]
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(self.train_ds, indices),
            batch_size=bs,
            shuffle=False,
            collate_fn=self.collate,
            generator=_own_generator(t.seed + st.epoch),
        )
        for micro, batch in enumerate(loader, start=1):
            self.session.check_stop()  # after the last step's checkpoint, before any new work
            st.batch_in_epoch += 1
            batch = {k: v.to(self.device) for k, v in batch.items()}
            sync = micro % accum == 0
            self.window.add(self.engine.train_batch(batch, sync, accum, self.autocast), batch)
            if sync and self._optimizer_step():
                return True
        return False

    def _optimizer_step(self) -> bool:
        """Step, then log / evaluate / checkpoint as due; True when training is over (or unhealthy)."""
        spec, st = self.spec, self.st
        found, measured = self._health_before_step()
        if self._stop_unhealthy(found, measured):  # a NaN is never applied, nor checkpointed
            return True
        grad_norm = self.engine.step(spec.training.max_grad_norm, measured)
        if self.check_grads and grad_norm is not None and not math.isfinite(grad_norm):
            # engines that update inside train_batch (DeepSpeed): the norm is global, so every rank stops here
            self._stop_unhealthy(health.nonfinite(0.0, grad_norm), grad_norm)
            return True
        if not self.memory_reported:  # after the first step: optimizers create their state lazily
            self.memory_reported = True
            ranks = progress.gather_memory(self.engine.memory())
            self.channel.emit(ev.Memory(strategy=spec.strategy.type, ranks=ranks))
        st.step += 1
        if self.fault_step and st.step == self.fault_step and self.rank == self.world - 1:
            _inject_fault(self.session)
        last = st.step >= self.total_steps
        if st.step % spec.training.log_every == 0 or last:
            self._log(grad_norm)
        self.window.loss = []
        evaluated = self._evaluate_periodic() if st.step % self.eval_every == 0 or last else None
        if st.step % self.ckpt_every == 0 or last or st.stopped_early:
            self.checkpoint(evaluated or {})
        if evaluated is not None:  # in one process with its driver: go on once it has handled the evaluation
            self.session.evaluation_reported()
        return last or st.stopped_early

    def _health_before_step(self) -> tuple[str | None, float | None]:
        """What is NaN or infinite in the step about to be taken (the same on every rank), and the grad norm."""
        loss = sum(self.window.loss)
        if health.injected_nan(self.st.step + 1, self.rank, self.world):
            loss = math.nan
        norm = health.grad_norm(self.engine.inner.parameters()) if self.check_grads else None
        return health.agree(health.nonfinite(loss, norm)), norm

    def _stop_unhealthy(self, kind: str | None, norm: float | None) -> bool:
        """Tell the driver why training stops here (every rank stops); True when it does."""
        if kind is None:
            return False
        self.unhealthy = True
        loss = progress.mean_over_ranks(sum(self.window.loss))  # collective; NaN when any rank's loss is
        if self.rank == 0:
            lr, step = self.engine.lr(), self.st.step + 1
            self.channel.emit(ev.Unhealthy(step=step, kind=kind, loss=loss, grad_norm=norm, learning_rate=lr))
        return True

    def _evaluate_periodic(self) -> dict:
        """Validation metrics, sent; early stopping's memory; the best model published when this is it."""
        spec, st = self.spec, self.st
        evaluated = self.evaluate("periodic")
        self.channel.emit(ev.Evaluated(step=st.step, tag="periodic", metrics=evaluated))
        progress.early_stopping(spec, st, evaluated)
        if spec.checkpoint.keep_best and st.best_step == st.step:
            info = {"step": st.step, "metric": progress.watched(spec), "value": st.best_metric}
            self.publish(self.config.best_dir, ckpt.BEST, info=info)
        return evaluated

    def _log(self, grad_norm: float | None) -> None:
        w, st, now = self.window, self.st, time.perf_counter()
        metrics = {
            "train_loss": progress.mean_over_ranks(sum(w.loss)),
            "learning_rate": self.engine.lr(),
            "samples_per_second": w.samples * self.shards / (now - w.t),
            "tokens_per_second": w.tokens * self.shards / (now - w.t),
            "epoch": st.epoch
            + st.batch_in_epoch / (self.steps_per_epoch * self.spec.training.gradient_accumulation_steps),
        }
        if grad_norm is not None:
            metrics["grad_norm"] = float(grad_norm)
        metrics.update(self.channel.system_metrics())
        self.channel.emit(ev.Stepped(step=st.step, metrics=metrics))
        w.t, w.samples, w.tokens = now, 0, 0

    # ---- evaluation, checkpoints, the published model ------------------------------------------------

    def evaluate(self, tag: str) -> dict:
        """Validation loss (periodic, before) and generation metrics (before, final)."""
        spec, metrics = self.spec, {}
        if self.val_loader is not None and tag != "final" and spec.task == "dpo":
            metrics = evaluate_pairs(
                self.engine.model,
                self.val_loader,
                self.dpo,
                self.device,
                self.autocast,
                spec.training.eval_batches,
            )
        elif self.val_loader is not None and tag != "final":  # the last periodic eval has the final loss
            metrics = evaluate(
                self.engine.model,
                self.val_loader,
                spec.task,
                self.device,
                self.autocast,
                spec.training.eval_batches,
                predictions=self.predictions,
            )
        if self.gen_records and tag in ("before", "final"):
            gen = spec.evaluation.generation
            with self.engine.whole_model() as whole:
                em, samples = exact_match(
                    whole,
                    self.tokenizer,
                    self.formatter,
                    self.gen_records,
                    self.rank,
                    self.world,
                    self.device,
                    gen.max_new_tokens,
                    gen.batch_size,
                )
            metrics["eval_exact_match"] = em
            self.channel.emit(ev.Samples(tag=tag, samples=samples))
        return metrics

    def checkpoint(self, metrics: dict) -> None:
        """Collective: every rank contributes its files (RNG, and its shard where the engine shards)."""
        report = {k: float(v) for k, v in metrics.items()}
        self.session.report(self.st.step, report, lambda d: self.engine.save(d, self.rank, self.st))

    def publish(self, dest: str, leaf: str, merge: bool = False, info: dict | None = None) -> None:
        """Collective: the whole model, written by rank 0 to dest and mirrored to the job's remote storage."""
        root = self.config.publish_root
        mirror = storage.join(root, leaf) if root else None
        publish_model(self.engine, self.rank, self.tokenizer, dest, merge=merge, info=info, mirror=mirror)

    def finish(self) -> None:
        spec, st = self.spec, self.st
        self._emit_predictions()
        final = self.evaluate("final") if self.gen_records else {}
        if final:
            self.channel.emit(ev.Evaluated(step=st.step, tag="final", metrics=final))
        if st.stopped_early:
            self.channel.emit(
                ev.StoppedEarly(step=st.step, best_step=st.best_step, best_metric=st.best_metric)
            )
        info = {"step": st.step, "job": self.job.name, "strategy": spec.strategy.type}
        self.publish(
            self.config.final_dir, ckpt.FINAL, merge=getattr(spec.peft, "merge_on_save", False), info=info
        )
        if self.rank == 0:
            self.channel.emit(ev.Finished(step=st.step, path=self.config.final_dir))
        progress.barrier()


class _Window:
    """Loss, samples and tokens since the last logged step (throughput over that wall time)."""

    def __init__(self):
        self.t, self.samples, self.tokens, self.loss = time.perf_counter(), 0, 0, []

    def add(self, loss: float, batch: dict) -> None:
        self.loss.append(loss)
        self.samples += batch["input_ids"].shape[0]
        self.tokens += int(batch["attention_mask"].sum())


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


def _inject_fault(session) -> None:
    """Test hook: the last rank fails once at KUBETRAIN_FAULT_AT_STEP (a marker file makes it once only).

    A worker dies a few seconds after that step, as a real fault would, rather than within milliseconds of
    the previous report: Ray's controller registers reported checkpoints asynchronously.
    """
    marker = os.environ.get("KUBETRAIN_FAULT_MARKER", "")
    if marker and os.path.exists(marker):
        return
    if marker:
        open(marker, "w").close()
    if session.distributed:
        time.sleep(float(os.environ.get("KUBETRAIN_FAULT_DELAY_S", "3")))
    session.fail()


def _quiet() -> None:
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("torch.distributed").setLevel(logging.ERROR)
    # peft imports bitsandbytes, which warns on import that an optional CPU kernel package is missing
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
