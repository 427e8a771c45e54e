"""What the recipe keeps track of while training: set-up phase times, the best evaluation, values over ranks."""

from __future__ import annotations

import time

import torch
import torch.distributed as dist

from .checkpoint import TrainState


class Phases:
    """Wall time of each set-up phase on this worker (shown with KUBETRAIN_VERBOSE=1, kept in MLflow tags)."""

    def __init__(self):
        self.t = time.perf_counter()
        self.done: dict[str, float] = {}

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        self.done[name] = round(now - self.t, 2)
        self.t = now


def watched(spec) -> str:
    """The validation metric that defines 'best': the early-stopping metric, else eval_loss."""
    es = spec.training.early_stopping
    name = es.metric if es else "eval_loss"
    return name if name.startswith("eval_") else "eval_" + name


def early_stopping(spec, st: TrainState, metrics: dict) -> None:
    """Record a new best evaluation in st, or count one more without improvement (and stop at patience)."""
    es = spec.training.early_stopping
    name = watched(spec)
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


def mean_over_ranks(value: float) -> float:
    """The step's loss over the whole global batch, not just rank 0's share of it."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return t.item() / dist.get_world_size()


def gather_memory(mine: dict) -> list[dict]:
    """Every rank's parameter / gradient / optimizer-state bytes, in rank order."""
    if not (dist.is_available() and dist.is_initialized()):
        return [mine]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, mine)
    return out


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
