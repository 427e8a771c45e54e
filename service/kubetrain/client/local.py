"""The local backend: runs a TrainingJob in this process on a local Ray (imports the runtime lazily)."""

from __future__ import annotations

from ..spec import TrainingJob


class LocalBackend:
    """Run jobs on this machine: local Ray, MLflow on SQLite under `root`."""

    def __init__(self, root: str = ".kubetrain", show: bool = True):
        self.root, self.show = root, show

    def run(self, job: TrainingJob):
        from ..runtime.driver import JobError, run_job

        try:
            if job.spec.sweep is not None:
                from ..runtime.sweep import run_sweep

                return run_sweep(job, local_root=self.root, show=self.show)
            return run_job(job, local_root=self.root, show=self.show)
        except JobError as e:
            from ..cli.files import UserError

            raise UserError(str(e)) from None
