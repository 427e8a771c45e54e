"""The recipe in this process (train_in_process): no Ray Train, checkpoints in Ray's layout, resume, keep_last."""

from __future__ import annotations

import os
import queue

import pytest

from kubetrain.runtime import contract as ev


def _config(job, root) -> ev.WorkerConfig:
    return ev.WorkerConfig(
        job=job.model_dump(mode="json"),
        cache_dir=str(root / "cache"),
        models_dir=str(root / "models"),
        final_dir=str(root / job.name / "final"),
        best_dir=str(root / job.name / "best"),
        queue=queue.Queue(),
    )


def _train(job, root, keep_last=2) -> list[ev.Event]:
    """train_in_process's events (it raises when training fails)."""
    from kubetrain.runtime.train.recipe import train_in_process

    config = _config(job, root)
    try:
        train_in_process(config, str(root / "runs"), job.name, keep_last)
    finally:
        events = []
        while not config.queue.empty():
            events.append(config.queue.get_nowait())
    return events


def _losses(events) -> dict[int, float]:
    return {e.step: e.metrics["train_loss"] for e in events if isinstance(e, ev.Stepped)}


def test_an_interrupted_run_resumes_from_its_checkpoint_with_the_same_losses(tiny_job, tmp_path, monkeypatch):
    from kubetrain.runtime.train import checkpoint

    one = dict(spec__resources__workers=1)
    reference = _train(tiny_job("straight", **one), tmp_path)
    assert sorted(_losses(reference)) == list(range(1, 9))
    assert isinstance(reference[-1], ev.Finished) and reference[-1].step == 8
    assert os.path.isfile(os.path.join(tmp_path / "straight" / "final", "adapter_config.json"))
    # checkpoints every 2 steps, the newest keep_last = 2 kept, named as Ray Train names them
    runs = tmp_path / "runs"
    assert sorted(os.listdir(runs / "straight")) == ["checkpoint_00000006", "checkpoint_00000008"]
    assert checkpoint.steps_in(str(runs / "straight")) == [6, 8]
    assert checkpoint.latest(str(runs / "straight")) == checkpoint.checkpoint_dir(str(runs / "straight"), 8)

    job = tiny_job("interrupted", **one)
    monkeypatch.setenv("KUBETRAIN_FAULT_AT_STEP", "5")
    monkeypatch.setenv("KUBETRAIN_FAULT_MARKER", str(tmp_path / "fault-once"))
    with pytest.raises(RuntimeError, match="injected fault"):
        _train(job, tmp_path)
    assert checkpoint.steps_in(str(runs / "interrupted")) == [2, 4]
    resumed = _train(job, tmp_path)  # the marker makes the fault fire once only
    assert [e.step for e in resumed if isinstance(e, ev.Resumed)] == [4]
    after = _losses(resumed)
    assert sorted(after) == [5, 6, 7, 8]  # continued after the step-4 checkpoint, nothing redone
    for step, loss in after.items():
        assert loss == pytest.approx(_losses(reference)[step], rel=1e-4, abs=1e-5)
    lr = {e.step: e.metrics["learning_rate"] for e in resumed if isinstance(e, ev.Stepped)}
    assert lr == {
        s: e.metrics["learning_rate"]
        for e in reference
        if isinstance(e, ev.Stepped)
        for s in [e.step]
        if s > 4
    }
    final = [e.metrics["eval_loss"] for e in resumed if isinstance(e, ev.Evaluated) and e.step == 8]
    assert final == pytest.approx(
        [e.metrics["eval_loss"] for e in reference if isinstance(e, ev.Evaluated) and e.step == 8]
    )


def test_strategies_that_need_a_worker_group_are_refused_in_process(tiny_job, tmp_path):
    job = tiny_job("piped", spec__strategy={"type": "pipeline", "stages": 2, "micro_batches": 2})
    with pytest.raises(ValueError, match="needs a Ray Train worker group"):
        _train(job, tmp_path)


def test_a_run_started_from_another_runs_checkpoint_takes_its_own_learning_rate(tiny_job, tmp_path):
    """Population-based training: the trial that takes over a checkpoint continues its schedule at its lr."""
    from kubetrain.runtime.train import checkpoint

    one = dict(spec__resources__workers=1)
    reference = _train(tiny_job("donor", **one), tmp_path)
    handed_over = checkpoint.checkpoint_dir(str(tmp_path / "runs" / "donor"), 6)
    job = tiny_job("taker", spec__training__learning_rate=0.02, **one)  # the donor's is 0.01
    config = ev.WorkerConfig(**{**vars(_config(job, tmp_path)), "init_checkpoint": handed_over})
    from kubetrain.runtime.train.recipe import train_in_process

    train_in_process(config, str(tmp_path / "runs"), job.name, 2)
    events = [config.queue.get_nowait() for _ in range(config.queue.qsize())]
    assert [(e.step, e.path) for e in events if isinstance(e, ev.Resumed)] == [(6, handed_over)]
    lr = {e.step: e.metrics["learning_rate"] for e in events if isinstance(e, ev.Stepped)}
    donor = {e.step: e.metrics["learning_rate"] for e in reference if isinstance(e, ev.Stepped)}
    assert sorted(lr) == [7, 8]
    for step in lr:
        assert lr[step] == pytest.approx(2 * donor[step], rel=1e-9)
