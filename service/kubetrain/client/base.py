"""The one abstract backend: the verbs every way of running jobs (local, kube, rest) implements."""

from __future__ import annotations

import abc
from collections.abc import Iterator

from ..spec import TrainingJob
from .types import JobInfo


class Backend(abc.ABC):
    """Where jobs live. Namespaced like Kubernetes; every method raises only `client.errors`."""

    @abc.abstractmethod
    def submit(self, job: TrainingJob, namespace: str) -> JobInfo:
        """Create the job; AlreadyExists if the name is taken."""

    @abc.abstractmethod
    def get(self, name: str, namespace: str) -> JobInfo: ...

    @abc.abstractmethod
    def list(self, namespace: str, labels: dict[str, str] | None = None) -> list[JobInfo]: ...

    @abc.abstractmethod
    def delete(self, name: str, namespace: str) -> None: ...

    @abc.abstractmethod
    def set_suspended(self, name: str, namespace: str, suspend: bool) -> JobInfo:
        """Suspend (stop, keep checkpoints) or resume a job."""

    @abc.abstractmethod
    def logs(self, name: str, namespace: str, follow: bool = False) -> Iterator[str]:
        """The job's output, line by line; with follow, until the job ends."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


def label_selector(labels: dict[str, str] | None) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted((labels or {}).items()))
