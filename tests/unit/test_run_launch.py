"""The driver's pieces that need no Ray: run paths, error lines, the in-process launch's queue and errors."""

from __future__ import annotations

import os

import pytest

from kubetrain.runtime import contract as ev
from kubetrain.runtime.run import launch
from kubetrain.runtime.run.paths import run_paths
from kubetrain.spec import validate_job
from tests.conftest import MINIMAL

RAY_WRAPPED = """Training failed due to worker errors:
[Rank 0]
Traceback (most recent call last):
  File "recipe.py", line 10, in train
    raise ValueError("spec.data.fields.prompt: no column 'question' in the data")
ValueError: spec.data.fields.prompt: no column 'question' in the data
(RayTrainWorker pid=123) some later noise"""


@pytest.mark.parametrize(
    ("text", "line"),
    [
        (RAY_WRAPPED, "ValueError: spec.data.fields.prompt: no column 'question' in the data"),
        ("gloo: [connection closed]\nworker died", "worker died"),
        ("", ""),
    ],
)
def test_short_error_is_the_line_naming_the_cause(text, line):
    assert launch.short_error(text) == line


def job(storage: str):
    data = {**MINIMAL, "spec": {**MINIMAL["spec"], "checkpoint": {"storage": storage}}}
    return validate_job(data)


def test_run_paths_local_and_remote(tmp_path):
    local = run_paths(job(str(tmp_path / "runs")), str(tmp_path / "root"))
    assert local.run_dir == str(tmp_path / "runs" / "t") and not local.remote
    assert local.final_dir == str(tmp_path / "runs" / "t" / "final") and local.publish_root is None
    remote = run_paths(job("s3://bucket/runs"), str(tmp_path / "root"))
    assert remote.run_dir == str(tmp_path / "root" / "runs" / "t")  # the driver's local copy
    assert remote.remote and remote.publish_root == "s3://bucket/runs/t"
    assert remote.models_dir == str(tmp_path / "root" / "models")


def test_in_process_launch_delivers_events_then_the_error_as_ray_reports_it():
    import queue

    q = queue.Queue()

    def body():
        q.put(ev.Stepped(step=1, metrics={"train_loss": 1.0}))
        q.put(ev.Stepped(step=2, metrics={"train_loss": 0.5}))
        raise ValueError("spec.training.max_steps: too many")

    launched = launch.Launched(body, q)
    seen = []
    while launched.running():
        seen += launched.next_events(wait_s=0.1)
    seen += launched.drain()
    assert [e.step for e in seen] == [1, 2] and launched.drain() == []
    assert launched.error_text() == "ValueError: spec.training.max_steps: too many"
    launched.close()  # nothing to stop for a plain queue


def test_in_process_launch_that_succeeds_has_no_error():
    import queue

    launched = launch.Launched(lambda: None, queue.Queue())
    assert launched.next_events(wait_s=1) == []  # nothing was sent; the run has ended meanwhile
    launched._thread.join(5)
    assert not launched.running() and launched.error_text() is None


def test_job_environment_is_set_for_the_run_and_restored(monkeypatch):
    monkeypatch.setenv("KT_KEPT", "before")
    monkeypatch.delenv("KT_NEW", raising=False)
    with launch._environment({"KT_KEPT": "during", "KT_NEW": "1"}):
        assert os.environ["KT_KEPT"] == "during" and os.environ["KT_NEW"] == "1"
    assert os.environ["KT_KEPT"] == "before" and "KT_NEW" not in os.environ


def test_an_in_process_recipe_waits_at_each_evaluation_until_its_driver_has_handled_it():
    """contract.Handshake: the recipe's side (wait_until_handled) and the driver's (Launched.handled, stop)."""
    import queue
    import threading

    q, handshake, passed = queue.Queue(), ev.Handshake(), []

    def recipe():
        for step in (4, 8):
            q.put(ev.Evaluated(step=step, tag="periodic", metrics={"eval_loss": 1.0 / step}))
            handshake.wait_until_handled()
            passed.append(step)
        q.put(ev.Evaluated(step=12, tag="periodic", metrics={}))
        handshake.wait_until_handled()  # never handled: only stop() ends this wait
        passed.append(12)

    launched = launch.Launched(recipe, q, handshake)
    first = launched.next_events(wait_s=30)
    assert [e.step for e in first] == [4] and passed == []  # it waits: nothing past the evaluation
    launched.handled(first)
    second = launched.next_events(wait_s=30)
    assert [e.step for e in second] == [8] and passed == [4]
    launched.handled([ev.Stepped(step=8, metrics={})])  # not an evaluation: still waiting
    assert launched.next_events(wait_s=0.3) == [] and passed == [4]
    launched.handled(second)
    assert [e.step for e in launched.next_events(wait_s=30)] == [12]
    stopper = threading.Thread(target=launched.stop)
    stopper.start()
    stopper.join(30)
    assert not stopper.is_alive() and not launched.running() and passed == [4, 8]
    assert isinstance(launched.error, ev.RunStopped)
