"""Local process groups (run/processes.py: the workers started as torchrun would, no Ray): the same losses
as Ray Train's worker group, collective checkpoints (DeepSpeed's too), restarts and failures.

The references are Ray Train runs of the same jobs (test_strategies.py's), so a difference between the two
launchers shows here as a different loss at some step.
"""

from __future__ import annotations

import pathlib

import pytest

from tests.integration import test_strategies
from tests.integration.test_local_run import run
from tests.integration.test_strategies import assert_same_run, interrupted_and_resumed, losses, strategy_job

ddp_reference = test_strategies.ddp_reference  # its module fixture: a Ray Train DDP run of the same job

pytestmark = pytest.mark.ray  # the references run on Ray Train


def test_ddp_in_a_process_group_matches_ray_trains_worker_group(ray_session, tiny_job, ddp_reference):
    result = run(strategy_job(tiny_job, "ddp-processes", {"type": "ddp"}), launcher="processes")
    assert_same_run(result, ddp_reference)
    assert result.memory and len(result.memory) == 2  # every rank reported, in rank order
    assert (pathlib.Path(result.run_dir) / "logs" / "worker-1.log").exists()  # the workers' output


def test_zero2_in_a_process_group_checkpoints_together_and_resumes_with_the_same_losses(
    ray_session, tiny_job, ddp_reference, tmp_path
):
    job = strategy_job(tiny_job, "zero2-processes", {"type": "deepspeed", "stage": 2})
    resumed = interrupted_and_resumed(job, ddp_reference, tmp_path, launcher="processes")
    assert resumed.after["eval_loss"] == pytest.approx(ddp_reference.after["eval_loss"], rel=1e-4)
    run_root = pathlib.Path(job.spec.checkpoint.storage) / job.name
    kept = sorted(p.name for p in run_root.iterdir() if p.name.startswith("checkpoint_"))
    assert kept == ["checkpoint_00000005", "checkpoint_00000010"]  # keep_last 2, nothing half-written
    assert not [p for p in run_root.iterdir() if p.name.startswith(".")]


def test_a_killed_worker_restarts_the_group_from_the_last_checkpoint(tiny_job, tmp_path):
    marker = tmp_path / "fault-once"
    job = tiny_job("killed-processes", spec__lifecycle__max_worker_failures=1)
    fault = {"KUBETRAIN_FAULT_AT_STEP": "3", "KUBETRAIN_FAULT_MARKER": str(marker)}
    result = run(job, worker_env=fault, launcher="processes")
    assert marker.exists(), "the fault hook never fired"
    assert result.succeeded, result.error
    assert result.resumed_from_step == 2
    assert result.steps == 8


def test_a_failed_worker_ends_the_run_with_its_cause_and_where_its_log_is(tiny_job, tmp_path):
    job = tiny_job("failing-processes", spec__lifecycle__max_worker_failures=0)
    fault = {"KUBETRAIN_FAULT_AT_STEP": "3", "KUBETRAIN_FAULT_MARKER": str(tmp_path / "fault-once")}
    result = run(job, worker_env=fault, launcher="processes")
    assert not result.succeeded
    logs = pathlib.Path(result.run_dir) / "logs"
    assert "exit code 17" in result.error and f"worker logs: {logs}" in result.error, result.error
    assert max(losses(result)) == 2  # step 3 never completed: the last rank died before its loss was averaged
