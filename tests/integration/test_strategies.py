"""Strategies against the DDP reference on real 2-worker Ray Train runs of a tiny model: losses, resume, memory.

The runs train on packed text (every sequence a full block, so a per-rank mean loss averaged over ranks is
the global mean) with LoRA dropout 0, so a different split of the same global batch over ranks computes the
same gradients. What remains is the order floating-point sums are taken in (bucketed all-reduce,
partitioned reduce-scatter): fp32 losses agree to rel 1e-4 over 10 steps.
"""

from __future__ import annotations

import pytest

from tests.conftest import ROOT
from tests.integration.test_local_run import run

pytestmark = pytest.mark.ray

STEPS = 10
TOL = {"rel": 1e-4, "abs": 1e-5}


def losses(result) -> dict[int, float]:
    return {h["step"]: h["train_loss"] for h in result.history if "train_loss" in h}


def assert_same_run(result, reference) -> None:
    """Every step's training loss and the final validation loss equal the reference run's."""
    assert result.succeeded, result.error
    ref, got = losses(reference), losses(result)
    assert sorted(got) == sorted(ref)
    for step in ref:
        assert got[step] == pytest.approx(ref[step], **TOL), step
    assert result.after["eval_loss"] == pytest.approx(reference.after["eval_loss"], **TOL)


def interrupted_and_resumed(job, reference, tmp_path, launcher: str = "auto"):
    """A worker dies after step 7; the rerun resumes from the step-5 checkpoint and matches reference."""
    marker = tmp_path / "fault-once"
    fault = {"KUBETRAIN_FAULT_AT_STEP": "7", "KUBETRAIN_FAULT_MARKER": str(marker)}
    broken = run(job, worker_env=fault, launcher=launcher)
    assert not broken.succeeded and marker.exists()
    resumed = run(job, launcher=launcher)
    assert resumed.succeeded, resumed.error
    assert resumed.resumed_from_step == 5
    after = losses(resumed)
    assert sorted(after) == list(range(6, STEPS + 1))
    for step in after:
        assert after[step] == pytest.approx(losses(reference)[step], **TOL), step
    return resumed


def strategy_job(tiny_job, name: str, strategy: dict, **overrides):
    base = {
        "spec__data": {
            "train": str(ROOT / "jobs/data/dates/train.jsonl"),
            "validation": str(ROOT / "jobs/data/dates/validation.jsonl"),
            "format": "text",
            "fields": {"text": "prompt"},
            "packing": True,
            "max_length": 32,
            "max_train_samples": 256,
            "max_validation_samples": 32,
        },
        "spec__peft__dropout": 0.0,
        "spec__training__max_steps": STEPS,
        "spec__training__eval_every": 5,
        "spec__checkpoint__every": 5,
        "spec__strategy": strategy,
        "spec__evaluation__generation": None,
    }
    return tiny_job(name, **{**base, **overrides})


@pytest.fixture(scope="module")
def ddp_reference(ray_session, tiny_job_module):
    result = run(strategy_job(tiny_job_module, "ddp", {"type": "ddp"}))
    assert result.succeeded, result.error
    return result


def test_ddp_on_two_workers_matches_one_process_with_the_same_global_batch(
    ray_session, tiny_job, ddp_reference
):
    single = run(
        strategy_job(
            tiny_job,
            "single",
            {"type": "ddp"},
            spec__resources__workers=1,
            spec__training__batch_size=8,  # 2 workers x 4 = one worker x 8: the same examples per step
        )
    )
    assert single.succeeded, single.error
    ref = losses(ddp_reference)
    assert sorted(ref) == list(range(1, STEPS + 1))
    for step, loss in losses(single).items():
        assert loss == pytest.approx(ref[step], **TOL), step


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_stages_follow_the_ddp_loss_trajectory_and_partition_optimizer_state(
    ray_session, tiny_job, ddp_reference, stage
):
    result = run(strategy_job(tiny_job, f"zero{stage}", {"type": "deepspeed", "stage": stage}))
    assert_same_run(result, ddp_reference)

    ddp_opt = ddp_reference.memory[0]["optimizer_bytes"]
    for rank in result.memory:
        share = rank["optimizer_bytes"] / ddp_opt
        if stage >= 1:  # 2 workers: each holds about half the Adam moments (partitions are padded)
            assert 0.4 < share < 0.6, (stage, share)
    if stage == 3:
        ddp_params = ddp_reference.memory[0]["param_bytes"]
        assert all(r["param_bytes"] < 0.6 * ddp_params for r in result.memory)


def test_zero3_checkpoints_resume_and_the_final_adapter_is_one_ordinary_peft_directory(
    ray_session, tiny_job, tmp_path
):
    strategy = {"type": "deepspeed", "stage": 3}
    reference = run(strategy_job(tiny_job, "zero3-straight", strategy))
    assert reference.succeeded, reference.error
    resumed = interrupted_and_resumed(
        strategy_job(tiny_job, "zero3-interrupted", strategy), reference, tmp_path
    )

    # The gathered adapter loads into a plain PEFT model and reproduces the run's validation loss
    import json
    import pathlib

    final = pathlib.Path(resumed.final_dir)
    assert json.loads((final / "kubetrain_model.json").read_text())["strategy"] == "deepspeed"
    from safetensors.torch import load_file

    adapter = load_file(final / "adapter_model.safetensors")
    assert adapter and all(t.numel() > 0 for t in adapter.values())  # ZeRO-3 placeholders would be empty


PIPELINE = {"type": "pipeline", "stages": 2, "micro_batches": 4}


@pytest.fixture(scope="module")
def accumulating_reference(ray_session, tiny_job_module):
    """One process, batch 2 x 4 accumulation steps: the micro-batches a 2-stage pipeline with batch 8 runs."""
    result = run(
        strategy_job(
            tiny_job_module,
            "accumulating",
            {"type": "ddp"},
            spec__resources__workers=1,
            spec__training__batch_size=2,
            spec__training__gradient_accumulation_steps=4,
        )
    )
    assert result.succeeded, result.error
    return result


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_two_stage_pipeline_matches_one_process_accumulating_the_same_micro_batches(
    ray_session, tiny_job, accumulating_reference, schedule
):
    result = run(
        strategy_job(
            tiny_job, f"pp-{schedule}", {**PIPELINE, "schedule": schedule}, spec__training__batch_size=8
        )
    )
    assert_same_run(result, accumulating_reference)
    # each stage holds about half the weights (embeddings / head make the halves unequal)
    whole = accumulating_reference.memory[0]["param_bytes"]
    assert all(0.2 * whole < m["param_bytes"] < 0.8 * whole for m in result.memory)


def test_pipeline_resumes_from_its_per_stage_checkpoint_with_the_same_losses(
    ray_session, tiny_job, accumulating_reference, tmp_path
):
    job = strategy_job(tiny_job, "pp-interrupted", PIPELINE, spec__training__batch_size=8)
    resumed = interrupted_and_resumed(job, accumulating_reference, tmp_path)
    # the whole model, gathered from both stages, is one ordinary PEFT adapter directory
    import pathlib

    from safetensors.torch import load_file

    adapter = load_file(pathlib.Path(resumed.final_dir) / "adapter_model.safetensors")
    layers = {k.split(".layers.")[1].split(".")[0] for k in adapter if ".layers." in k}
    assert layers == {"0", "1"}


def test_two_stages_by_two_replicas_train_and_converge(ray_session, tiny_job):
    result = run(
        strategy_job(
            tiny_job,
            "pp-2x2",
            {**PIPELINE, "micro_batches": 2},
            spec__resources={"workers": 4, "cpus_per_worker": 0.5},
            spec__training__batch_size=4,
            spec__peft={"type": "none"},  # a full fine-tune of the random tiny model learns fast
        )
    )
    assert result.succeeded, result.error
    assert len(result.memory) == 4
    ls = losses(result)
    assert ls[STEPS] < 0.8 * ls[1], ls
    assert result.after["eval_loss"] < 0.8 * result.before["eval_loss"]
