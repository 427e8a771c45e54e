"""Overhead of kubetrain's runtime against a hand-written torch.distributed DDP script, measured in one run.

Same model (the quickstart's SmolLM2-135M + LoRA by default), same tokenized data, batch size and
steps; (a) kubetrain with 2 Ray Train workers, (b) plain gloo DDP with 2 processes. Prints
steady-state samples/s of both, their ratio (kubetrain / plain; target >= 0.95) and the
time-to-first-step of both. The last line is a JSON object with the figures.

    python bench/overhead.py [--job jobs/quickstart.yaml] [--steps 24] [--warmup 4] [--repeats 1]

With --repeats N the two arms alternate (plain, kubetrain, plain, ...) and medians are reported, so a
drift in machine load affects both arms alike.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "service"))


def bench_job(path: str, steps: int, storage: str):
    from kubetrain.spec import load_job

    overrides = [
        f"spec.training.max_steps={steps}",
        "spec.training.eval_every=100000",
        "spec.checkpoint.every=100000",
        "spec.training.log_every=1",
        "spec.evaluation.generation=null",
        "spec.data.validation=null",
        "spec.data.validation_split=0",
        f"spec.checkpoint.storage={storage}",
        f"metadata.name=overhead-{int(time.time())}",
        "spec.tracking.system_metrics=false",
    ]
    return load_job(pathlib.Path(path).read_text(), path, overrides)


def run_kubetrain(job, warmup: int) -> dict:
    from kubetrain.runtime.driver import run_job

    t0 = time.time()
    result = run_job(job, local_root=str(ROOT / ".kubetrain"), show=False)
    if not result.succeeded:
        raise SystemExit(f"kubetrain run failed: {result.error}")
    steps = [h for h in result.history if "samples_per_second" in h]
    steady = [h["samples_per_second"] for h in steps if h["step"] > warmup]
    return {"samples_per_second": statistics.median(steady), "time_to_first_step_s": steps[0]["time"] - t0}


def _plain_worker(rank: int, world: int, job_json: str, model_dir: str, steps: int, port: int, out) -> None:
    """The hand-written baseline: gloo DDP, AdamW, the same batches; nothing else."""
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from kubetrain.runtime import data as data_mod
    from kubetrain.runtime.models import apply_peft, build_model, build_tokenizer
    from kubetrain.spec import TrainingJob

    job = TrainingJob.model_validate_json(job_json)
    spec = job.spec
    torch.manual_seed(spec.training.seed)
    splits = data_mod.load_splits(spec.data, spec.training.seed, tempfile.mkdtemp())
    tok = build_tokenizer(spec.model, model_dir)
    model = apply_peft(build_model(spec.model, model_dir, tok, spec.task), spec.peft, spec.task)
    ds = data_mod.tokenize(splits.train, spec.data, tok)
    sampler = torch.utils.data.DistributedSampler(
        ds, num_replicas=world, rank=rank, seed=spec.training.seed, drop_last=True
    )
    loader = torch.utils.data.DataLoader(
        ds, batch_size=spec.training.batch_size, sampler=sampler, collate_fn=data_mod.collate(tok, False)
    )
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.AdamW([p for p in ddp.parameters() if p.requires_grad], lr=spec.training.learning_rate)
    times = []
    it = iter(loader)
    for _ in range(steps):
        t = time.time()
        batch = next(it)
        loss = ddp(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ddp.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append((t, time.time()))
    if rank == 0:
        out.put(times)
    dist.barrier()
    dist.destroy_process_group()


def run_plain(job, warmup: int, steps: int) -> dict:
    import socket

    import torch.multiprocessing as mp

    from kubetrain.runtime.driver import resolve_paths
    from kubetrain.runtime.models import resolve_model_dir

    job = resolve_paths(job)
    model_dir = resolve_model_dir(job.spec.model, ROOT / ".kubetrain" / "models")
    world = job.spec.resources.workers
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    t0 = time.time()
    procs = [
        ctx.Process(target=_plain_worker, args=(r, world, job.model_dump_json(), model_dir, steps, port, out))
        for r in range(world)
    ]
    for p in procs:
        p.start()
    times = out.get(timeout=1800)
    for p in procs:
        p.join()
    global_batch = job.spec.training.batch_size * world
    steady = [global_batch / (end - start) for i, (start, end) in enumerate(times) if i + 1 > warmup]
    return {"samples_per_second": statistics.median(steady), "time_to_first_step_s": times[0][1] - t0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", default=str(ROOT / "jobs/quickstart.yaml"))
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    os.chdir(ROOT)
    plains, kts = [], []
    for i in range(args.repeats):
        with tempfile.TemporaryDirectory() as storage:
            job = bench_job(args.job, args.steps, storage)
            plains.append(run_plain(job, args.warmup, args.steps))
            print(
                f"[{i + 1}/{args.repeats}] plain DDP : {plains[-1]['samples_per_second']:.2f} samples/s steady, "
                f"first step after {plains[-1]['time_to_first_step_s']:.1f} s",
                flush=True,
            )
            kts.append(run_kubetrain(job, args.warmup))
            print(
                f"[{i + 1}/{args.repeats}] kubetrain : {kts[-1]['samples_per_second']:.2f} samples/s steady, "
                f"first step after {kts[-1]['time_to_first_step_s']:.1f} s",
                flush=True,
            )
    plain = {k: statistics.median(r[k] for r in plains) for k in plains[0]}
    kt = {k: statistics.median(r[k] for r in kts) for k in kts[0]}
    ratio = kt["samples_per_second"] / plain["samples_per_second"]
    print(f"steady-state ratio kubetrain / plain = {ratio:.3f} (target >= 0.95)")
    print(
        json.dumps(
            {
                "benchmark": "overhead",
                "job": args.job,
                "steps": args.steps,
                "warmup_steps": args.warmup,
                "repeats": args.repeats,
                "workers": job.spec.resources.workers,
                "batch_size_per_worker": job.spec.training.batch_size,
                "kubetrain_samples_per_second": round(kt["samples_per_second"], 3),
                "plain_samples_per_second": round(plain["samples_per_second"], 3),
                "ratio": round(ratio, 4),
                "kubetrain_time_to_first_step_s": round(kt["time_to_first_step_s"], 2),
                "plain_time_to_first_step_s": round(plain["time_to_first_step_s"], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
