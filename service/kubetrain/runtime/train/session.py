"""Where the recipe runs: a Ray Train worker of a group, a process of a local process group (no Ray), or
this process alone (no group).

The recipe asks its session for its rank and device, the checkpoint to resume from, and to store a
checkpoint; Ray Train does the last two in its worker group, train/checkpoint.py everywhere else.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator

import torch

from ..contract import Handshake, RunStopped
from . import checkpoint as ckpt

Write = Callable[[str], None]  # writes this rank's part of a checkpoint into a local directory


class RaySession:
    """A worker of a Ray Train group (TorchTrainer): torch.distributed is set up, Ray stores checkpoints."""

    distributed = True

    def __init__(self, init_checkpoint: str | None):
        import ray.train
        import ray.train.torch as rt

        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = rt.get_device()
        self.init_checkpoint = init_checkpoint

    @contextlib.contextmanager
    def resume_from(self, resume: bool) -> Iterator[tuple[str, str] | None]:
        """(local directory, path) of this run's latest checkpoint (after a restart), else the one handed over."""
        import ray.train

        found = ray.train.get_checkpoint() if resume else None
        if found is None and self.init_checkpoint:
            found = ray.train.Checkpoint(self.init_checkpoint)
        if found is None:
            yield None
            return
        with found.as_directory() as d:
            yield d, found.path

    def report(self, step: int, metrics: dict, write: Write) -> None:
        """Collective (Ray's report is a barrier): every rank contributes its files to one checkpoint."""
        import ray.train

        with tempfile.TemporaryDirectory(prefix="kubetrain-ckpt-") as tmp:
            write(tmp)
            ray.train.report(
                {"step": step, **metrics},
                checkpoint=ray.train.Checkpoint.from_directory(tmp),
                checkpoint_dir_name=ckpt.leaf(step),
            )

    def placement_group(self) -> str | None:
        import ray

        return ray.get_runtime_context().get_placement_group_id()

    def check_stop(self) -> None:
        """A worker group is stopped by Ray (its actors end), never asked."""

    def evaluation_reported(self) -> None:
        """Nothing to wait for: the driver is another process."""

    def fail(self) -> None:
        """Test hook: the worker process dies, as a real fault would (Ray restarts the group)."""
        os._exit(17)


class _OwnCheckpoints:
    """A session whose checkpoints train/checkpoint.py writes under <storage_path>/<run_name> (not Ray Train),
    the newest keep_last kept; resuming reads the latest complete one, else the one handed over."""

    def __init__(self, run_root: str, keep_last: int | None, init_checkpoint: str | None):
        self.run_root, self.keep_last, self.init_checkpoint = run_root, keep_last, init_checkpoint

    @contextlib.contextmanager
    def resume_from(self, resume: bool) -> Iterator[tuple[str, str] | None]:
        """(local directory, path) of the run's latest complete checkpoint when resuming, else the handed one."""
        path = (ckpt.latest(self.run_root) if resume else None) or self.init_checkpoint
        if path is None:
            yield None
            return
        with tempfile.TemporaryDirectory(prefix="kubetrain-resume-") as tmp:
            yield ckpt.fetch(path, tmp), path

    def placement_group(self) -> str | None:
        return None


class LocalSession(_OwnCheckpoints):
    """The recipe in this process: rank 0 of 1, cpu (cuda:0 when the spec asks for GPUs and one is here)."""

    distributed = False
    rank, world = 0, 1

    def __init__(
        self,
        run_root: str,
        keep_last: int | None,
        init_checkpoint: str | None,
        gpus: bool,
        handshake: Handshake | None = None,
    ):
        super().__init__(run_root, keep_last, init_checkpoint)
        self.handshake = handshake
        self.device = torch.device("cuda:0" if gpus and torch.cuda.is_available() else "cpu")

    def report(self, step: int, metrics: dict, write: Write) -> None:
        ckpt.write(self.run_root, step, self.keep_last, write)

    def check_stop(self) -> None:
        """RunStopped when the driver (a sweep whose scheduler stopped this trial) wants the run to end."""
        if self.handshake is not None and self.handshake.stop.is_set():
            raise RunStopped("stopped by the caller")

    def evaluation_reported(self) -> None:
        """Wait until the driver has handled the periodic evaluation just emitted (contract.Handshake)."""
        if self.handshake is not None:
            self.handshake.wait_until_handled()

    def fail(self) -> None:
        """Test hook: in this process a fault is an exception (the caller reports it)."""
        raise RuntimeError("injected fault (KUBETRAIN_FAULT_AT_STEP)")


class GroupSession(_OwnCheckpoints):
    """A process of a local process group (run/processes.py started it with RANK, WORLD_SIZE, MASTER_ADDR/PORT
    in its environment, as torchrun sets them, and its own CUDA_VISIBLE_DEVICES): torch.distributed is set up
    here; cpu or cuda:0; every rank writes its files into one checkpoint (checkpoint.write_together)."""

    distributed = True

    def __init__(
        self, run_root: str, keep_last: int | None, init_checkpoint: str | None, gpus: bool, backend: str
    ):
        import torch.distributed as dist

        super().__init__(run_root, keep_last, init_checkpoint)
        self.device = torch.device("cuda:0" if gpus else "cpu")  # a rank sees its own GPUs only
        if gpus:
            torch.cuda.set_device(self.device)
        dist.init_process_group(backend, init_method="env://")
        self.rank, self.world = dist.get_rank(), dist.get_world_size()

    def report(self, step: int, metrics: dict, write: Write) -> None:
        """Collective: every rank contributes its files to one checkpoint."""
        ckpt.write_together(self.run_root, step, self.keep_last, write)

    def check_stop(self) -> None:
        """The group is stopped by its launcher (its processes end), never asked."""

    def evaluation_reported(self) -> None:
        """Nothing to wait for: the driver is another process."""

    def fail(self) -> None:
        """Test hook: the process dies, as a real fault would (the launcher restarts the group)."""
        os._exit(17)


def process_group_backend(spec) -> str:
    """torch.distributed's backend for the spec: strategy.backend, or nccl on GPUs and gloo on CPUs."""
    backend = getattr(spec.strategy, "backend", "auto")
    if backend != "auto":
        return backend
    return "nccl" if spec.resources.gpus_per_worker else "gloo"
