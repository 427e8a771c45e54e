"""Compute ASHA + TPE needs to match the best validation loss random search + FIFO reaches, measured in one run.

Same task, search space and trial budget for both arms; for each seed, random + FIFO runs the full budget
(every trial to its last step) and sets the target: the best validation loss any of its evaluations
reached. ASHA + TPE then runs the same budget, and we count the compute it spent until its first
evaluation at or below that target: training steps (all trials, counted from each trial's step log,
including steps a stopped trial ran after its last report) and wall time since the sweep started.
Prints per-seed figures and the median ratios (ASHA+TPE / random; target <= 0.33). Last line: JSON.

The model is the tiny random-init Llama of tests/integration (LoRA on the dates task): SmolLM2-135M
takes ~1.5 s a step here, and 3 seeds x 2 arms x 8 trials of it would take hours on 2 cores.

    python bench/asha_vs_random.py [--seeds 0 1 2] [--trials 8] [--steps 24] [--eval-every 3]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import pathlib
import statistics
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "service"))
sys.path.insert(0, str(ROOT))


def sweep_job(storage: str, name: str, seed: int, algorithm: str, scheduler: str, args):
    from kubetrain.spec import validate_job
    from tests.integration.conftest import TINY

    data = copy.deepcopy(TINY)
    data["metadata"]["name"] = name
    spec = data["spec"]
    spec["resources"] = {"workers": 1, "cpus_per_worker": 0.5}
    spec["training"].update(max_steps=args.steps, eval_every=args.eval_every, warmup_steps=0, batch_size=8)
    spec["checkpoint"] = {"storage": storage, "every": args.steps, "keep_last": 1, "resume": False}
    spec["tracking"] = {"tracking_uri": f"sqlite:///{storage}/mlflow.db", "system_metrics": False}
    spec["sweep"] = {
        "algorithm": algorithm,
        "scheduler": scheduler,
        "trials": args.trials,
        "max_concurrent": args.concurrency,
        "grace_period": 1,
        "reduction_factor": 3,
        "seed": seed,
        "metric": "eval_loss",
        "mode": "min",
        "parameters": {
            "training.learning_rate": {"type": "loguniform", "low": 1e-4, "high": 0.3},
            "peft.r": {"type": "choice", "values": [2, 4, 8, 16]},
        },
    }
    return validate_job(data)


def trial_log(run_dir: str | None) -> tuple[list[float], list[tuple[float, float]]]:
    """(times of training steps, [(time, eval_loss)] of periodic evaluations) from a trial's metrics.jsonl."""
    steps, evals = [], []
    path = os.path.join(run_dir or "", "metrics.jsonl")
    if run_dir and os.path.exists(path):
        for line in open(path):
            rec = json.loads(line)
            if "train_loss" in rec:
                steps.append(rec["time"] / 1000)
            elif "eval_loss" in rec and rec["step"] > 0:  # step 0 is the untrained baseline
                evals.append((rec["time"] / 1000, rec["eval_loss"]))
    return steps, evals


def compute_to_reach(
    trials: list[tuple[list[float], list[tuple[float, float]]]], target: float, start: float
) -> dict:
    """Steps (all trials) and seconds since start until the first evaluation <= target; None if never."""
    hits = sorted(t for _, evals in trials for t, loss in evals if loss <= target + 1e-12)
    all_steps = sorted(t for steps, _ in trials for t in steps)
    if not hits:
        return {"reached": False, "steps": len(all_steps), "seconds": None}
    when = hits[0]
    return {"reached": True, "steps": sum(1 for t in all_steps if t <= when), "seconds": when - start}


def run_arm(job) -> dict:
    from kubetrain.runtime.sweep import run_sweep

    start = time.time()
    result = run_sweep(job, local_root=os.path.join(job.spec.checkpoint.storage, "root"), show=False)
    end = time.time()
    if result.best is None:
        raise SystemExit(f"{job.name}: no trial finished an evaluation ({result.error})")
    logs = [trial_log(t.run_dir) for t in result.trials]
    statuses = [t.status for t in result.trials]
    return {
        "start": start,
        "seconds": end - start,
        "logs": logs,
        "steps": sum(len(s) for s, _ in logs),
        "best": min(loss for _, evals in logs for _, loss in evals),
        "stopped_early": statuses.count("stopped_early"),
        "failed": statuses.count("failed"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--eval-every", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=3)
    args = parser.parse_args()

    import ray

    from kubetrain.runtime.driver import start_local_ray

    start_local_ray(num_cpus=2)
    rows = []
    with tempfile.TemporaryDirectory(prefix="asha-bench-") as storage:
        for seed in args.seeds:
            rnd = run_arm(sweep_job(storage, f"random-{seed}", seed, "random", "fifo", args))
            asha = run_arm(sweep_job(storage, f"asha-tpe-{seed}", seed, "tpe", "asha", args))
            reach = compute_to_reach(asha["logs"], rnd["best"], asha["start"])
            step_ratio = reach["steps"] / rnd["steps"] if reach["reached"] else math.inf
            wall_ratio = reach["seconds"] / rnd["seconds"] if reach["reached"] else math.inf
            row = {
                "seed": seed,
                "target_eval_loss": round(rnd["best"], 5),
                "random_steps": rnd["steps"],
                "random_seconds": round(rnd["seconds"], 1),
                "asha_reached": reach["reached"],
                "asha_steps_to_reach": reach["steps"],
                "asha_seconds_to_reach": None if reach["seconds"] is None else round(reach["seconds"], 1),
                "asha_total_steps": asha["steps"],
                "asha_total_seconds": round(asha["seconds"], 1),
                "asha_best_eval_loss": round(asha["best"], 5),
                "asha_stopped_early": asha["stopped_early"],
                "step_ratio": round(step_ratio, 3),
                "wall_ratio": round(wall_ratio, 3),
            }
            rows.append(row)
            print(
                f"seed {seed}: random+FIFO best eval_loss {rnd['best']:.4f} in {rnd['steps']} steps / "
                f"{rnd['seconds']:.0f} s; ASHA+TPE reached it: {reach['reached']} after {reach['steps']} steps"
                f" / {row['asha_seconds_to_reach']} s ({asha['stopped_early']} of {args.trials} trials stopped "
                f"early; its best {asha['best']:.4f}); ratios steps {step_ratio:.3f}, wall {wall_ratio:.3f}",
                flush=True,
            )
    ray.shutdown()
    median_steps = statistics.median(r["step_ratio"] for r in rows)
    median_wall = statistics.median(r["wall_ratio"] for r in rows)
    print(
        f"median compute ratio ASHA+TPE / random: steps {median_steps:.3f}, wall time {median_wall:.3f} "
        f"(target <= 0.33)"
    )
    print(
        json.dumps(
            {
                "benchmark": "asha_vs_random",
                "model": "tiny llama from_config + LoRA (dates)",
                "trials": args.trials,
                "max_steps": args.steps,
                "eval_every": args.eval_every,
                "concurrency": args.concurrency,
                "median_step_ratio": median_steps,
                "median_wall_ratio": median_wall,
                "target": 0.33,
                "seeds": rows,
            }
        )
    )


if __name__ == "__main__":
    main()
