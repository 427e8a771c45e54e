"""Overhead of kubetrain's runtime against a hand-written torch.distributed DDP script: start-up and steady state.

What it measures. The same job (the quickstart's SmolLM2-135M + LoRA by default: same tokenized data, batch
size and steps) run two ways, each from a fresh process as a user would start it:
(a) kubetrain: `run_job` with 2 workers (a local process group by default; `--launcher ray`: Ray Train on a
    Ray started by the run), MLflow tracking, the console off;
(b) plain: a 2-process gloo DDP script (spawned processes, AdamW, the same batches; nothing else).
For each run:
- time to first step: from starting the process to the end of the first optimizer step (wall clock);
- steady-state samples/s: global batch x steps after the warm-up, over the time those steps took
  (from the end of step `warmup` to the end of the last one; data loading included for both).
The arms alternate in ABBA order over --repeats pairs (plain, kubetrain | kubetrain, plain | ...), so a
drift in machine load affects both alike; each pair gives a ratio, and the medians over the pairs are
reported: steady-state kubetrain/plain (goal >= 0.97) and time-to-first-step kubetrain/plain (goal <= 1.5).
The last line is a JSON object with the figures.

    python bench/overhead.py [--job jobs/quickstart.yaml] [--steps 40] [--warmup 8] [--repeats 3] [--launcher ray]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
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


def arm_kubetrain(job, launcher: str) -> list[float]:
    """Wall-clock end time of each step of a kubetrain run in this process."""
    from kubetrain.runtime.run.job import run_job

    result = run_job(job, local_root=str(ROOT / ".kubetrain"), show=False, launcher=launcher)
    if not result.succeeded:
        raise SystemExit(f"kubetrain run failed: {result.error}")
    return [h["time"] for h in result.history if "samples_per_second" in h]


def _plain_worker(rank: int, world: int, job_json: str, model_dir: str, steps: int, port: int, out) -> None:
    """The hand-written baseline: gloo DDP, AdamW, the same batches; nothing else."""
    import torch
    import torch.distributed as dist

    from kubetrain.runtime.run.ray_start import QUIET_ENV

    torch.set_num_threads(1)
    os.environ.update(QUIET_ENV, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))  # as quiet as Ray's workers
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from kubetrain.runtime.train import data as data_mod
    from kubetrain.runtime.train.models import apply_peft, build_model, build_tokenizer
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
    ends = []
    it = iter(loader)
    for _ in range(steps):
        batch = next(it)
        loss = ddp(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ddp.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ends.append(time.time())
    if rank == 0:
        out.put(ends)
    dist.barrier()
    dist.destroy_process_group()


def arm_plain(job) -> list[float]:
    """Wall-clock end time of each step of the plain DDP script, its workers spawned from this process."""
    import socket

    import torch.multiprocessing as mp

    from kubetrain.runtime.run.paths import resolve_paths
    from kubetrain.runtime.train.models import resolve_model_dir

    job = resolve_paths(job)
    model_dir = resolve_model_dir(job.spec.model, ROOT / ".kubetrain" / "models")
    world = job.spec.resources.workers
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    args = (world, job.model_dump_json(), model_dir, job.spec.training.max_steps, port, out)
    procs = [ctx.Process(target=_plain_worker, args=(r, *args)) for r in range(world)]
    for p in procs:
        p.start()
    ends = out.get(timeout=1800)
    for p in procs:
        p.join()
    return ends


def measure(arm: str, args) -> dict:
    """One run of an arm in a fresh process: time to first step and steady-state samples/s."""
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "ends.json"
        cmd = [sys.executable, __file__, "--arm", arm, "--job", args.job, "--steps", str(args.steps)]
        cmd += ["--launcher", args.launcher]
        started = time.time()
        subprocess.run([*cmd, "--storage", tmp, "--out", str(out)], check=True, cwd=ROOT)
        ends = json.loads(out.read_text())
    job = bench_job(args.job, args.steps, "/tmp")
    global_batch = job.spec.training.batch_size * job.spec.resources.workers
    warmup = min(max(args.warmup, 1), len(ends) - 1)  # the window starts at the end of a step
    steady = global_batch * (len(ends) - warmup) / (ends[-1] - ends[warmup - 1])
    return {"time_to_first_step_s": ends[0] - started, "samples_per_second": steady}


def run_arm(args) -> None:
    """The child process: one arm, its step end times written to --out."""
    job = bench_job(args.job, args.steps, args.storage)
    ends = arm_plain(job) if args.arm == "plain" else arm_kubetrain(job, args.launcher)
    pathlib.Path(args.out).write_text(json.dumps(ends))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", default=str(ROOT / "jobs/quickstart.yaml"))
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="pairs of runs (plain and kubetrain)")
    parser.add_argument(
        "--launcher", choices=("auto", "processes", "ray"), default="auto", help="kubetrain's"
    )
    parser.add_argument("--arm", choices=("plain", "kubetrain"), help=argparse.SUPPRESS)
    parser.add_argument("--storage", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arm:
        return run_arm(args)
    os.chdir(ROOT)
    runs: dict[str, list[dict]] = {"plain": [], "kubetrain": []}
    for i in range(args.repeats):
        for arm in ("plain", "kubetrain") if i % 2 == 0 else ("kubetrain", "plain"):
            runs[arm].append(measure(arm, args))
            r = runs[arm][-1]
            print(
                f"[{i + 1}/{args.repeats}] {arm:9}: {r['samples_per_second']:.2f} samples/s steady, "
                f"first step after {r['time_to_first_step_s']:.1f} s",
                flush=True,
            )
    report(args, runs)


def report(args, runs: dict[str, list[dict]]) -> None:
    pairs = list(zip(runs["kubetrain"], runs["plain"], strict=True))
    steady = statistics.median(k["samples_per_second"] / p["samples_per_second"] for k, p in pairs)
    first = statistics.median(k["time_to_first_step_s"] / p["time_to_first_step_s"] for k, p in pairs)
    med = {arm: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for arm, rs in runs.items()}
    print(f"steady-state ratio kubetrain / plain = {steady:.3f} (goal >= 0.97)")
    print(f"time-to-first-step ratio kubetrain / plain = {first:.2f} (goal <= 1.5)")
    print(
        json.dumps(
            {
                "benchmark": "overhead",
                "job": args.job,
                "launcher": args.launcher,
                "steps": args.steps,
                "warmup_steps": args.warmup,
                "repeats": args.repeats,
                "steady_state_ratio": round(steady, 4),
                "time_to_first_step_ratio": round(first, 3),
                "kubetrain_samples_per_second": round(med["kubetrain"]["samples_per_second"], 3),
                "plain_samples_per_second": round(med["plain"]["samples_per_second"], 3),
                "kubetrain_time_to_first_step_s": round(med["kubetrain"]["time_to_first_step_s"], 2),
                "plain_time_to_first_step_s": round(med["plain"]["time_to_first_step_s"], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
