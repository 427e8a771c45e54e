"""The SDK's local backend with a real run: submit returns at once, the job runs on a local Ray in the
background, suspend stops it (checkpoints kept), resume continues from the latest checkpoint, and
get/wait/logs/metrics read its state (the run's MLflow store for metrics)."""

from __future__ import annotations

import pathlib

import pytest
import yaml
from harness import eventually

from kubetrain.client import TrainingClient

pytestmark = pytest.mark.ray


def test_local_run_suspend_resume_and_metrics(tiny_job, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    job = tiny_job("sdk-local", **{"spec.training.max_steps": 60, "spec.training.eval_every": 30})
    tc = TrainingClient(root=tmp_path / ".kubetrain")
    name = tc.submit(job)
    runs = pathlib.Path(job.spec.checkpoint.storage) / name

    def checkpointed() -> bool:
        """the run wrote its first checkpoint"""
        assert not tc.get(name).finished, "\n".join(tc.logs(name))
        return any(runs.glob("checkpoint_*"))

    eventually(checkpointed, timeout=600, interval=0.2)
    assert tc.get(name).phase == "Running"
    tc.suspend(name)
    info = tc.wait(name, until="Suspended", timeout=300, poll=0.5)
    assert info.status.reason == "Suspended" and not info.finished
    tc.resume(name)
    info = tc.wait(name, timeout=600, poll=0.5)
    assert info.phase == "Succeeded" and info.status.progress.step == 60
    log = "\n".join(tc.logs(name))
    assert "Resuming from the checkpoint at step" in log, log[-3000:]
    history = tc.metrics(name)
    assert [step for step, _ in history["train_loss"]][-1] == 60
    assert (
        yaml.safe_load((tmp_path / ".kubetrain/jobs/default/sdk-local/job.yaml").read_text())["metadata"][
            "name"
        ]
        == name
    )
    tc.delete(name)
    assert tc.list() == []
