"""Throughput and per-rank memory of each strategy against DDP, on the same model and global batch, in one run.

Each strategy trains the same model (by default a from-scratch Llama of ~7M parameters, full fine-tune, so
optimizer state is large enough for ZeRO's partitioning to show) on the same data with the same global
batch, on 2 Ray Train workers: DDP, DeepSpeed ZeRO-1/2/3, ZeRO-2 with the optimizer offloaded, and a
2-stage pipeline (1 replica; its per-worker batch is the global batch, split into micro-batches).
Prints steady-state samples/s, per-rank bytes of parameters + gradients + optimizer state, and the ratio
of each to DDP's measured in this run. The last line is a JSON object.

    python bench/strategies.py [--steps 16] [--warmup 4] [--only ddp,zero2,pipeline] [--job JOB.yaml]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "service"))

WORKERS = 2
GLOBAL_BATCH = 8
STRATEGIES = {
    "ddp": {"type": "ddp"},
    "zero1": {"type": "deepspeed", "stage": 1},
    "zero2": {"type": "deepspeed", "stage": 2},
    "zero3": {"type": "deepspeed", "stage": 3},
    "zero2_offload": {"type": "deepspeed", "stage": 2, "offload_optimizer": "cpu"},
    "pipeline": {"type": "pipeline", "stages": 2, "micro_batches": 4, "schedule": "1f1b"},
}
MODEL = {
    "from_config": {"architecture": "llama", "hidden_size": 256, "num_layers": 8, "num_heads": 8},
    "tokenizer": {"type": "bpe", "vocab_size": 2048},
}


def bench_job(name: str, strategy: dict, steps: int, storage: str, job_path: str | None):
    from kubetrain.spec import load_job, set_path, validate_job

    if job_path:
        data = load_job(pathlib.Path(job_path).read_text(), job_path).model_dump(
            mode="json", exclude_none=True
        )
    else:
        data = {
            "apiVersion": "kubetrain.dev/v1alpha1",
            "kind": "TrainingJob",
            "metadata": {"name": name},
            "spec": {
                "model": MODEL,
                "data": {
                    "train": str(ROOT / "jobs/data/dates/train.jsonl"),
                    "format": "instruction",
                    "max_length": 64,
                    "max_train_samples": 1024,
                },
                "peft": {"type": "none"},
                "training": {"learning_rate": 1e-3},
            },
        }
    pipeline = strategy["type"] == "pipeline"
    replicas = WORKERS // strategy.get("stages", 1)
    for path, value in {
        "metadata.name": f"bench-{name.replace('_', '-')}-{int(time.time())}",
        "spec.strategy": strategy,
        "spec.resources.workers": WORKERS,
        "spec.resources.cpus_per_worker": 1,
        "spec.training.max_steps": steps,
        "spec.training.batch_size": GLOBAL_BATCH // replicas if pipeline else GLOBAL_BATCH // WORKERS,
        "spec.training.gradient_accumulation_steps": 1,
        "spec.training.eval_every": 100000,
        "spec.training.log_every": 1,
        "spec.checkpoint.every": 100000,
        "spec.checkpoint.storage": storage,
        "spec.evaluation.generation": None,
        "spec.data.validation": None,
        "spec.data.validation_split": 0,
        "spec.tracking.system_metrics": False,
    }.items():
        set_path(data, path, value)
    data.get("spec", {}).pop("sweep", None)
    return validate_job(data)


def measure(job, warmup: int) -> dict:
    from kubetrain.runtime.run.job import run_job

    result = run_job(job, local_root=str(ROOT / ".kubetrain"), show=False)
    if not result.succeeded:
        return {"error": result.error}
    steady = [
        h["samples_per_second"] for h in result.history if "samples_per_second" in h and h["step"] > warmup
    ]
    per_rank = [m["param_bytes"] + m["grad_bytes"] + m["optimizer_bytes"] for m in result.memory]
    return {
        "samples_per_second": statistics.median(steady),
        "max_rank_bytes": max(per_rank),
        "ranks": result.memory,
        "final_train_loss": next(h["train_loss"] for h in reversed(result.history) if "train_loss" in h),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--only", default=",".join(STRATEGIES), help="comma-separated: " + ", ".join(STRATEGIES))
    ap.add_argument("--job", default=None, help="a TrainingJob YAML to take model, data and peft from")
    args = ap.parse_args()
    names = ["ddp"] + [n for n in args.only.split(",") if n and n != "ddp"]

    from kubetrain.runtime.run.ray_start import start_local_ray

    start_local_ray(num_cpus=WORKERS)
    out: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="kubetrain-bench-") as storage:
        for name in names:
            out[name] = measure(bench_job(name, STRATEGIES[name], args.steps, storage, args.job), args.warmup)
            print(f"# {name}: {json.dumps({k: v for k, v in out[name].items() if k != 'ranks'})}", flush=True)
    base = out["ddp"]
    print(f"{'strategy':<15}{'samples/s':>11}{'vs ddp':>9}{'max rank MiB':>14}{'vs ddp':>9}  final loss")
    for name, r in out.items():
        if "error" in r:
            print(f"{name:<15} failed: {r['error']}")
            continue
        r["throughput_vs_ddp"] = round(r["samples_per_second"] / base["samples_per_second"], 3)
        r["memory_vs_ddp"] = round(r["max_rank_bytes"] / base["max_rank_bytes"], 3)
        print(
            f"{name:<15}{r['samples_per_second']:>11.2f}{r['throughput_vs_ddp']:>9.3f}"
            f"{r['max_rank_bytes'] / 2**20:>14.1f}{r['memory_vs_ddp']:>9.3f}  {r['final_train_loss']:.4f}"
        )
    print(
        json.dumps({"workers": WORKERS, "global_batch": GLOBAL_BATCH, "steps": args.steps, "strategies": out})
    )


if __name__ == "__main__":
    main()
