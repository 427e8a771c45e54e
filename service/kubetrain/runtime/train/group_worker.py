"""What each process of a local process group runs first (run/processes.py starts them, as torchrun would):
its rank's environment and log file before any heavy import, then the recipe."""

from __future__ import annotations

import os
import sys


def main(
    index: int,
    world: int,
    port: int,
    config,
    env: dict[str, str],
    threads: int,
    gpus: list[str] | None,
    log_dir: str | None,
) -> None:
    """torch.multiprocessing's target: process `index` of `world`; the process group meets at MASTER_PORT.
    gpus: each rank's CUDA_VISIBLE_DEVICES (None on CPU), set before CUDA starts, so a rank's GPU is cuda:0."""
    os.environ.update(env)
    if gpus is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[index]
    os.environ.update(
        RANK=str(index),
        LOCAL_RANK=str(index),
        WORLD_SIZE=str(world),
        LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        OMP_NUM_THREADS=str(threads),  # as Ray gives its workers: one thread per CPU asked for
    )
    if log_dir:
        _log_to(os.path.join(log_dir, f"worker-{index}.log"))
    import torch

    torch.set_num_threads(threads)
    from .recipe import train_in_group

    train_in_group(config)


def _log_to(path: str) -> None:
    """This process's stdout and stderr (its libraries' and native code's too) into `path`."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
