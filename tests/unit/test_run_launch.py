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


def test_auto_launcher_is_a_process_group_locally_and_ray_train_in_a_cluster_or_an_up_ray(monkeypatch):
    import sys
    import types

    from kubetrain.runtime.run.job import choose_launcher
    from kubetrain.runtime.run.paths import JobError

    monkeypatch.setitem(sys.modules, "ray", types.SimpleNamespace(is_initialized=lambda: False))
    assert choose_launcher("auto", in_cluster=False, in_process=False) == "processes"
    assert choose_launcher("auto", in_cluster=True, in_process=False) == "ray"
    assert choose_launcher("ray", in_cluster=False, in_process=False) == "ray"
    assert choose_launcher("processes", in_cluster=True, in_process=True) == "in_process"  # a sweep's trial
    monkeypatch.setitem(sys.modules, "ray", types.SimpleNamespace(is_initialized=lambda: True))
    assert choose_launcher("auto", in_cluster=False, in_process=False) == "ray"  # a sweep's Ray, a test's
    with pytest.raises(JobError, match="'processes' runs on this machine only"):
        choose_launcher("processes", in_cluster=True, in_process=False)
    with pytest.raises(JobError, match="'mpi' is not one of auto, ray, processes"):
        choose_launcher("mpi", in_cluster=False, in_process=False)


def test_a_process_groups_events_arrive_over_a_multiprocessing_queue_and_its_error_names_the_cause():
    import multiprocessing

    from torch.multiprocessing import ProcessRaisedException

    q = multiprocessing.get_context("spawn").Queue()
    trace = (
        "\n\n-- Process 1 terminated with the following error:\nTraceback (most recent call last):\n"
        '  File "recipe.py", line 10, in setup\n    raise ValueError("spec.data: no rows left")\n'
        "ValueError: spec.data: no rows left\n"
    )

    def body():
        q.put(ev.Stepped(step=1, metrics={"train_loss": 1.0}))
        raise ProcessRaisedException(trace, 1, 4242)

    launched = launch.Launched(body, q, stop=lambda: None)
    seen = launched.next_events(wait_s=5)
    launched._thread.join(5)
    seen += launched.drain()
    assert [e.step for e in seen] == [1] and not launched.on_ray
    assert launched.error_text() == "ValueError: spec.data: no rows left"


def test_a_process_group_gets_whole_gpus_in_order_and_too_few_is_refused_by_name(monkeypatch):
    from kubetrain.runtime.run.paths import JobError
    from kubetrain.runtime.run.processes import gpu_assignment

    assert gpu_assignment(2, 0.0) is None  # CPU workers: nothing to assign
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5,6,7")
    assert gpu_assignment(2, 1.0) == ["3", "5"]
    assert gpu_assignment(2, 2.0) == ["3,5", "6,7"]
    assert gpu_assignment(4, 0.5) == ["3", "5", "6", "7"]
    with pytest.raises(
        JobError, match=r"spec.resources: 3 worker\(s\) x 2 GPU\(s\) need 6 GPUs; this machine has 4"
    ):
        gpu_assignment(3, 2.0)
