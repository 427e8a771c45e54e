"""Engine pieces that need no process group: hyperparameters after a checkpoint load, memory accounting."""

from __future__ import annotations

import pytest
import torch

from kubetrain.runtime.engines import Engine, _optimizer_bytes, build_optimizer, build_scheduler
from kubetrain.spec.training import TrainingSpec


def _engine(training: TrainingSpec, steps: int) -> Engine:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    e = Engine()
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
