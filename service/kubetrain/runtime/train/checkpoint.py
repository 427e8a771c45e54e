"""The run layout and what a checkpoint holds: weights, optimizer, data position, RNG; written atomically.

A run keeps its checkpoints under `<storage>/<run name>/checkpoint_<step:08d>` (the layout Ray Train's
report(checkpoint_dir_name=...) writes, and the in-process session writes the same); STATE, written last,
marks a complete one. The learning-rate schedule is not saved: it is rebuilt at the loaded step
(schedule.build_scheduler), which is also how a changed learning rate takes effect.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from .. import storage

STATE = "trainer_state.json"
WEIGHTS = "weights.pt"
OPTIM = "optimizer.pt"
FINAL, BEST = "final", "best"  # the published models' leaves in a run's local directory
_LEAF = re.compile(r"^checkpoint_(\d{8})$")


def leaf(step: int) -> str:
    """The directory name of the checkpoint taken after `step` optimizer steps."""
    return f"checkpoint_{step:08d}"


def checkpoint_dir(run_root: str, step: int) -> str:
    """Where a run whose checkpoints live under run_root (local or remote) keeps the one of `step`."""
    return storage.join(run_root, leaf(step))


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


def save(directory: str, rank: int, model, optimizer, state: TrainState) -> None:
    """DDP: the position (save_position), and on rank 0 the trainable weights and the optimizer."""
    save_position(directory, rank, state)
    if rank != 0:
        return
    torch.save(trainable_state(model), os.path.join(directory, WEIGHTS))
    torch.save({"optimizer": optimizer.state_dict()}, os.path.join(directory, OPTIM))


def load(directory: str, rank: int, model, optimizer) -> TrainState:
    """Restore what save wrote."""
    model.load_state_dict(torch.load(os.path.join(directory, WEIGHTS), weights_only=True), strict=False)
    optimizer.load_state_dict(torch.load(os.path.join(directory, OPTIM), weights_only=False)["optimizer"])
    return load_position(directory, rank)


# ---- the run directory, for a recipe whose workers Ray Train does not run (Ray Train keeps its own) ---


def steps_in(run_root: str) -> list[int]:
    """Steps of the complete checkpoints (STATE present) under run_root, oldest first."""
    names = _list(run_root)
    steps = [int(m.group(1)) for m in map(_LEAF.match, names) if m]
    return sorted(s for s in steps if storage.exists(storage.join(checkpoint_dir(run_root, s), STATE)))


def latest(run_root: str) -> str | None:
    """The newest complete checkpoint of a run, or None."""
    steps = steps_in(run_root)
    return checkpoint_dir(run_root, steps[-1]) if steps else None


def write(run_root: str, step: int, keep_last: int | None, fill: Callable[[str], None]) -> str:
    """The checkpoint of `step`: fill(directory) writes its files, then it is put in place and all but the
    newest keep_last are dropped. Atomic: a local one is filled beside its place and renamed into it; a
    remote one is uploaded with its STATE file last."""
    staged = stage(run_root, step)
    try:
        fill(staged)
        return commit(run_root, step, keep_last, staged)
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def write_together(run_root: str, step: int, keep_last: int | None, fill: Callable[[str], None]) -> None:
    """write() by every rank of a process group on this machine: rank 0 stages one directory, every rank
    fills it with its own files (a collective save such as DeepSpeed's writes into one place), and once all
    have, rank 0 puts it in place; every rank returns after that."""
    import torch.distributed as dist

    rank = dist.get_rank()
    staged = [stage(run_root, step) if rank == 0 else None]
    dist.broadcast_object_list(staged, src=0)
    try:
        fill(staged[0])
        dist.barrier()
        if rank == 0:
            commit(run_root, step, keep_last, staged[0])
    finally:
        if rank == 0:
            shutil.rmtree(staged[0], ignore_errors=True)
    dist.barrier()


def stage(run_root: str, step: int) -> str:
    """An empty local directory to fill with the checkpoint of `step`: beside its place when run_root is
    local (so commit is a rename), else a temporary one."""
    if storage.is_remote(run_root):
        return tempfile.mkdtemp(prefix="kubetrain-ckpt-")
    os.makedirs(run_root, exist_ok=True)
    return tempfile.mkdtemp(prefix="." + leaf(step) + "-", dir=run_root)


def commit(run_root: str, step: int, keep_last: int | None, staged: str) -> str:
    """Put a filled staged directory in place as the checkpoint of `step`; drop all but the newest keep_last."""
    dest = checkpoint_dir(run_root, step)
    if storage.is_remote(run_root):
        _upload(staged, dest)
    else:
        if os.path.exists(dest):  # the same step written again (a resumed run): the newer copy wins
            shutil.rmtree(dest)
        os.replace(staged, dest)
    if keep_last:
        for old in steps_in(run_root)[:-keep_last]:
            _remove(checkpoint_dir(run_root, old))
    return dest


def fetch(path: str, local: str) -> str:
    """A local directory holding the checkpoint at `path` (downloaded into `local` when remote)."""
    if not storage.is_remote(path):
        return path
    if not storage.download_dir(path, local):
        raise FileNotFoundError(f"no checkpoint at {path}")
    return local


def _list(root: str) -> list[str]:
    if not storage.is_remote(root):
        return os.listdir(root) if os.path.isdir(root) else []
    from pyarrow import fs

    filesystem, inner = fs.FileSystem.from_uri(root)
    infos = filesystem.get_file_info(fs.FileSelector(inner, allow_not_found=True))
    return [i.base_name for i in infos if i.type == fs.FileType.Directory]


def _upload(local: str, uri: str) -> None:
    """Everything but STATE, then STATE: a reader that sees STATE sees a complete checkpoint."""
    from pyarrow import fs

    filesystem, inner = fs.FileSystem.from_uri(uri)
    if filesystem.get_file_info(inner).type != fs.FileType.NotFound:
        filesystem.delete_dir(inner)  # the same step written again (a resumed run): the newer copy wins
    filesystem.create_dir(inner, recursive=True)
    with tempfile.TemporaryDirectory() as held:
        state, moved = os.path.join(local, STATE), os.path.join(held, STATE)
        shutil.move(state, moved)
        try:
            fs.copy_files(local, inner, fs.LocalFileSystem(), filesystem)
            fs.copy_files(moved, inner + "/" + STATE, fs.LocalFileSystem(), filesystem)
        finally:
            shutil.move(moved, state)


def _remove(path: str) -> None:
    if not storage.is_remote(path):
        shutil.rmtree(path, ignore_errors=True)
        return
    from pyarrow import fs

    filesystem, inner = fs.FileSystem.from_uri(path)
    filesystem.delete_dir(inner)
