"""DPO in this process on tiny models: SFT -> DPO chaining (a whole model, an adapter), reference rebuilt."""

from __future__ import annotations

import os
import queue

import pytest

from kubetrain.runtime import contract as ev
from tests.conftest import ROOT

PREFS = {
    "spec__task": "dpo",
    "spec__data__format": "preference",
    "spec__data__train": str(ROOT / "jobs/data/dates/preferences_train.jsonl"),
    "spec__data__validation": str(ROOT / "jobs/data/dates/preferences_validation.jsonl"),
    "spec__resources__workers": 1,
    "spec__training__learning_rate": 0.02,
    "spec__data__max_length": 128,
}


def _train(job, root) -> list[ev.Event]:
    from kubetrain.runtime.run.paths import check_inputs, resolve_paths
    from kubetrain.runtime.train.recipe import train_in_process

    check_inputs(job)
    job = resolve_paths(job)
    config = ev.WorkerConfig(
        job=job.model_dump(mode="json"),
        cache_dir=str(root / "cache"),
        models_dir=str(root / "models"),
        final_dir=str(root / "runs" / job.name / "final"),
        best_dir=str(root / "runs" / job.name / "best"),
        queue=queue.Queue(),
    )
    train_in_process(config, str(root / "runs"), job.name, 2)
    events = []
    while not config.queue.empty():
        events.append(config.queue.get_nowait())
    return events


def _evaluated(events, tag):
    return [e.metrics for e in events if isinstance(e, ev.Evaluated) and e.tag == tag]


def test_sft_then_dpo_on_its_model_and_on_its_adapter(tiny_job, tmp_path):
    # SFT, a full fine-tune: its published final model is a whole model (with its tokenizer)
    sft = tiny_job(
        "sft", spec__peft={"type": "none"}, spec__resources__workers=1, spec__training__max_steps=4
    )
    _train(sft, tmp_path)
    sft_dir = str(tmp_path / "runs" / "sft" / "final")
    model = {"init_from": "sft", "tokenizer": {"type": "model"}}

    # DPO from that job by name, fresh LoRA: the reference is the SFT model (the adapter disabled)
    dpo = tiny_job("dpo", spec__model=model, **PREFS)
    events = _train(dpo, tmp_path)
    before, after = _evaluated(events, "before")[0], _evaluated(events, "periodic")[-1]
    assert before["eval_reward_accuracy"] == 0.5 and before["eval_reward_margin"] == 0.0  # policy = reference
    assert before["eval_loss"] == pytest.approx(0.6931, abs=1e-3)  # -log sigmoid(0)
    assert after["eval_reward_margin"] > 0 and after["eval_reward_accuracy"] > 0.5
    assert after["eval_loss"] < before["eval_loss"]

    # an adapter trained on that model, continued by DPO (the reference: the adapter as loaded)
    lora = tiny_job(
        "sft-lora",
        spec__model={"name_or_path": sft_dir},
        spec__resources__workers=1,
        spec__training__max_steps=4,
    )
    _train(lora, tmp_path)
    cont = tiny_job("dpo-lora", spec__model={"name_or_path": sft_dir, "init_from": "sft-lora"}, **PREFS)
    events = _train(cont, tmp_path)
    before, after = _evaluated(events, "before")[0], _evaluated(events, "periodic")[-1]
    assert before["eval_reward_accuracy"] == 0.5 and before["eval_reward_margin"] == 0.0
    assert (
        after["eval_reward_margin"] != 0.0
    )  # the adapter trained; whether 8 steps of a random model generalise: not asked
    assert os.path.isfile(tmp_path / "runs" / "dpo-lora" / "final" / "adapter_config.json")


def test_a_missing_init_from_is_named_before_training(tiny_job, tmp_path):
    from kubetrain.runtime.run.paths import JobError, check_inputs

    job = tiny_job("dpo", spec__model={"init_from": "no-such-job", "tokenizer": {"type": "model"}}, **PREFS)
    with pytest.raises(JobError, match="spec.model.init_from: no published model of job 'no-such-job'"):
        check_inputs(job)


def _dpo_strategy_job(tiny_job, name: str, strategy: dict, **overrides):
    """A tiny DPO job from scratch (fresh LoRA: the reference is the model with the adapter disabled)."""
    base = {
        **PREFS,
        "spec__peft__dropout": 0.0,  # a different split of the same global batch computes the same gradients
        "spec__resources__workers": 2,
        "spec__training__batch_size": 2,
        "spec__training__max_steps": 6,
        "spec__training__eval_every": 3,
        "spec__checkpoint__every": 3,
        "spec__strategy": strategy,
    }
    return tiny_job(name, **{**base, **overrides})


@pytest.mark.ray
def test_dpo_under_ddp_and_zero3_matches_one_process_and_resumes(ray_session, tiny_job, tmp_path):
    """Per-pair losses averaged per rank, then over ranks, are the global mean: the runs agree to fp32
    summation order. A worker dies after step 5; the rerun resumes at 3 with the reference rebuilt."""
    from tests.integration.test_local_run import run

    def losses(result):
        assert result.succeeded, result.error
        return {h["step"]: h["train_loss"] for h in result.history if "train_loss" in h}

    ddp = losses(run(_dpo_strategy_job(tiny_job, "ddp", {"type": "ddp"})))
    assert sorted(ddp) == list(range(1, 7))
    single = _dpo_strategy_job(
        tiny_job, "single", {"type": "ddp"}, spec__resources__workers=1, spec__training__batch_size=4
    )
    zero3 = _dpo_strategy_job(tiny_job, "zero3", {"type": "deepspeed", "stage": 3})
    for job in (single, zero3):
        got = losses(run(job))
        for step in ddp:
            assert got[step] == pytest.approx(ddp[step], rel=1e-4, abs=1e-5), (job.name, step)

    job = _dpo_strategy_job(tiny_job, "interrupted", {"type": "ddp"})
    marker = tmp_path / "fault-once"
    broken = run(job, worker_env={"KUBETRAIN_FAULT_AT_STEP": "5", "KUBETRAIN_FAULT_MARKER": str(marker)})
    assert not broken.succeeded and marker.exists()
    resumed = run(job)
    assert resumed.resumed_from_step == 3
    for step, loss in losses(resumed).items():
        assert loss == pytest.approx(ddp[step], rel=1e-4, abs=1e-5), step


@pytest.mark.ray
def test_a_sweep_over_dpo_beta_runs_its_trials(ray_session, tiny_job):
    from tests.integration.test_sweep import run as run_sweep

    sweep = {
        "algorithm": "grid",
        "metric": "eval_reward_accuracy",
        "mode": "max",
        "max_concurrent": 1,
        "parameters": {"dpo.beta": {"type": "grid", "values": [0.1, 1.0]}},
    }
    job = tiny_job(
        "beta",
        spec__sweep=sweep,
        **{**PREFS, "spec__resources": {"workers": 1, "cpus_per_worker": 0.5}},
        spec__training__max_steps=4,
        spec__training__eval_every=2,
        spec__checkpoint__every=2,
    )
    result = run_sweep(job)
    assert result.succeeded, result.error
    assert sorted(t.params["dpo.beta"] for t in result.trials) == [0.1, 1.0]
    assert all(t.status == "completed" for t in result.trials)
