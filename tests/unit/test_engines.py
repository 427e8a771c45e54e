"""Engine pieces that need no process group: hyperparameters after a checkpoint load, memory accounting."""

from __future__ import annotations

import pytest
import torch

from kubetrain.runtime.train.engines.base import Engine
from kubetrain.runtime.train.engines.base import optimizer_bytes as _optimizer_bytes
from kubetrain.runtime.train.schedule import build_optimizer, build_scheduler
from kubetrain.spec.training import TrainingSpec


def _engine(training: TrainingSpec, steps: int) -> Engine:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    e = Engine()
    e.total_steps = 20  # the schedule is rebuilt for the run's length when hyperparameters change
    e.optimizer = build_optimizer(training, model.parameters(), torch.device("cpu"))
    e.scheduler = build_scheduler(training, e.optimizer, total_steps=20)
    for _ in range(steps):
        model(torch.ones(1, 4)).sum().backward()
        e.optimizer.step()
        e.scheduler.step()
    return e


def test_a_loaded_schedule_takes_the_specs_learning_rate_and_weight_decay():
    old = TrainingSpec(learning_rate=1e-3, warmup_steps=2, max_steps=20, schedule="cosine")
    saved = _engine(old, steps=5)
    new = TrainingSpec(learning_rate=4e-3, warmup_steps=2, max_steps=20, schedule="cosine", weight_decay=0.1)
    e = _engine(new, steps=0)
    e.optimizer.load_state_dict(saved.optimizer.state_dict())
    e.scheduler.load_state_dict(saved.scheduler.state_dict())
    assert e.optimizer.param_groups[0]["lr"] == saved.optimizer.param_groups[0]["lr"]  # the old trial's lr
    e.apply_hyperparameters(new)
    factor = saved.optimizer.param_groups[0]["lr"] / 1e-3
    assert e.optimizer.param_groups[0]["lr"] == pytest.approx(4e-3 * factor, rel=1e-12)
    assert e.optimizer.param_groups[0]["weight_decay"] == 0.1
    assert e.scheduler.get_last_lr()[0] == e.optimizer.param_groups[0]["lr"]
    e.scheduler.step()  # and the schedule continues from the new base
    assert e.scheduler.base_lrs == [4e-3]


def test_plain_resume_is_left_exactly_as_saved():
    t = TrainingSpec(learning_rate=1e-3, warmup_steps=2, max_steps=20)
    e = _engine(t, steps=7)
    before = e.optimizer.param_groups[0]["lr"]
    e.apply_hyperparameters(t)
    assert e.optimizer.param_groups[0]["lr"] == before


def test_optimizer_bytes_count_the_adam_moments():
    t = TrainingSpec(learning_rate=1e-3, max_steps=20)
    e = _engine(t, steps=1)
    # Linear(4, 2): 10 parameters; exp_avg + exp_avg_sq in fp32, plus two scalar step counters
    assert _optimizer_bytes(e.optimizer) == 2 * 10 * 4 + 2 * 4


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
def test_a_schedule_rebuilt_at_a_step_continues_exactly_as_the_stepped_one(schedule):
    t = TrainingSpec(learning_rate=1e-3, warmup_steps=3, max_steps=20, schedule=schedule)
    stepped = _engine(t, steps=9)
    model = torch.nn.Linear(4, 2)
    opt = build_optimizer(t, model.parameters(), torch.device("cpu"))
    opt.load_state_dict(stepped.optimizer.state_dict())
    rebuilt = build_scheduler(t, opt, total_steps=20, step=9)
    assert rebuilt.last_epoch == stepped.scheduler.last_epoch == 9
    for _ in range(8):
        assert rebuilt.get_last_lr() == stepped.scheduler.get_last_lr()
        assert opt.param_groups[0]["lr"] == stepped.optimizer.param_groups[0]["lr"]
        opt.step()
        stepped.optimizer.step()
        rebuilt.step()
        stepped.scheduler.step()


def test_every_strategy_has_an_engine_and_only_ddp_on_one_worker_runs_in_process():
    from kubetrain.runtime.train.engines import check_in_process, engine_class, runs_in_process
    from kubetrain.spec import validate_job
    from tests.conftest import MINIMAL

    def spec(strategy, workers):
        data = {
            **MINIMAL,
            "spec": {**MINIMAL["spec"], "strategy": strategy, "resources": {"workers": workers}},
        }
        return validate_job(data).spec

    kinds = {"ddp": {"type": "ddp"}, "deepspeed": {"type": "deepspeed"}, "pipeline": {"type": "pipeline"}}
    assert {k: engine_class(spec(s, 2)).__name__ for k, s in kinds.items()} == {
        "ddp": "DDPEngine",
        "deepspeed": "DeepSpeedEngine",
        "pipeline": "PipelineEngine",
    }
    assert runs_in_process(spec(kinds["ddp"], 1))
    assert not runs_in_process(spec(kinds["ddp"], 2))
    assert not runs_in_process(spec(kinds["deepspeed"], 1))
    with pytest.raises(ValueError, match="'deepspeed' on 1 worker"):
        check_in_process(spec(kinds["deepspeed"], 1))
    # stages of one pipeline replica read the same data shard; data parallel ranks each their own
    piped = spec({"type": "pipeline", "stages": 2}, 4)
    assert [engine_class(piped).data_shard(piped, r, 4) for r in range(4)] == [(0, 2), (0, 2), (1, 2), (1, 2)]
    assert engine_class(spec(kinds["ddp"], 4)).data_shard(None, 3, 4) == (3, 4)
