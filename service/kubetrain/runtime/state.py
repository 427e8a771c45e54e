"""What a checkpoint holds and how it is written and read: weights, optimizer, schedule, data position, RNG."""

from __future__ import annotations

import json
import os
import random
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

STATE = "trainer_state.json"
WEIGHTS = "weights.pt"
OPTIM = "optimizer.pt"


@dataclass
class TrainState:
    """Loop position and early-stopping memory; saved in every checkpoint."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of the current epoch already consumed
    best_metric: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    stopped_early: bool = False
    history: list[dict] = field(default_factory=list)
    spec_fingerprint: str = ""


def trainable_state(model) -> dict:
    """Only the trainable tensors (the LoRA adapter) or the whole state for a full fine-tune."""
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v.detach().cpu() for k, v in model.state_dict().items() if k in names}


def save_position(directory: str, rank: int, state: TrainState) -> None:
    """Every rank saves its RNG; rank 0 also the loop position (shared by every strategy)."""
    os.makedirs(directory, exist_ok=True)
    rng = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    torch.save(rng, os.path.join(directory, f"rng_rank{rank}.pt"))
    if rank == 0:
        with open(os.path.join(directory, STATE), "w") as f:
            json.dump(asdict(state), f)


def load_position(directory: str, rank: int) -> TrainState:
    """The loop position, and this rank's RNG when present (a world-size change keeps fresh RNG)."""
    with open(os.path.join(directory, STATE)) as f:
        state = TrainState(**json.load(f))
    rng_path = os.path.join(directory, f"rng_rank{rank}.pt")
    if os.path.exists(rng_path):
        rng = torch.load(rng_path, weights_only=False)
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
    return state


def save(directory: str, rank: int, model, optimizer, scheduler, state: TrainState) -> None:
    """DDP: the position (save_position), and on rank 0 the trainable weights, optimizer and scheduler."""
    save_position(directory, rank, state)
    if rank != 0:
        return
    torch.save(trainable_state(model), os.path.join(directory, WEIGHTS))
    torch.save(
        {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
        os.path.join(directory, OPTIM),
    )


def load(directory: str, rank: int, model, optimizer, scheduler) -> TrainState:
    """Restore what save wrote."""
    model.load_state_dict(torch.load(os.path.join(directory, WEIGHTS), weights_only=True), strict=False)
    opt = torch.load(os.path.join(directory, OPTIM), weights_only=False)
    optimizer.load_state_dict(opt["optimizer"])
    scheduler.load_state_dict(opt["scheduler"])
    return load_position(directory, rank)
