"""run_job(in_process=True): the recipe in a thread of the driver (what a sweep's one-worker trials use)."""

from __future__ import annotations

import pathlib

import pytest

from kubetrain.runtime import contract as ev

pytestmark = pytest.mark.ray


def run(job, **kw):
    from kubetrain.runtime.run.job import run_job

    return run_job(
        job, local_root=str(pathlib.Path(job.spec.checkpoint.storage).parent / "root"), show=False, **kw
    )


def losses(result) -> dict[int, float]:
    return {h["step"]: h["train_loss"] for h in result.history if "train_loss" in h}


def test_in_process_run_trains_like_one_ray_train_worker(ray_session, tiny_job):
    from mlflow.tracking import MlflowClient

    reference = run(tiny_job("one-worker", spec__resources__workers=1))
    assert reference.succeeded, reference.error
    seen: list[ev.Event] = []
    result = run(tiny_job("in-process", spec__resources__workers=1), in_process=True, on_event=seen.append)
    assert result.succeeded, result.error

    assert sorted(losses(result)) == list(range(1, 9))
    for step, loss in losses(reference).items():
        assert losses(result)[step] == pytest.approx(loss, rel=1e-4, abs=1e-5)
    assert result.after["eval_loss"] == pytest.approx(reference.after["eval_loss"], rel=1e-4)
    assert isinstance(seen[0], ev.RunStarted) and seen[0].run_dir == result.run_dir
    assert any(isinstance(e, ev.Finished) for e in seen)
    # the same run layout as Ray Train's: checkpoints (keep_last 2), final and best models
    run_dir = pathlib.Path(result.run_dir)
    assert sorted(p.name for p in run_dir.glob("checkpoint_0*")) == [
        "checkpoint_00000006",
        "checkpoint_00000008",
    ]
    assert (pathlib.Path(result.final_dir) / "adapter_model.safetensors").exists() and result.best_dir
    mrun = MlflowClient(result.tracking_uri).get_run(result.mlflow_run_id)
    assert mrun.info.status == "FINISHED" and "driver_seconds.launch" in mrun.data.tags


def test_in_process_failure_is_reported_and_the_rerun_resumes(ray_session, tiny_job, tmp_path):
    marker = tmp_path / "fault-once"
    job = tiny_job("in-process-fault", spec__resources__workers=1)
    fault = {"KUBETRAIN_FAULT_AT_STEP": "5", "KUBETRAIN_FAULT_MARKER": str(marker)}
    broken = run(job, in_process=True, worker_env=fault)
    assert not broken.succeeded and marker.exists()
    assert broken.error == "RuntimeError: injected fault (KUBETRAIN_FAULT_AT_STEP)"  # no Ray log hint: no Ray
    resumed = run(job, in_process=True)
    assert resumed.succeeded, resumed.error
    assert resumed.resumed_from_step == 4 and sorted(losses(resumed)) == [5, 6, 7, 8]


def test_a_caller_that_stops_at_an_evaluation_ends_the_recipe_before_its_next_step(tiny_job):
    """As a sweep trial is stopped: tune.report exits in the driver's thread at the step-4 evaluation; the
    recipe ends before step 5, the step-4 checkpoint complete, nothing published, and the process trains on."""
    import threading

    from kubetrain.runtime.train import checkpoint

    class Stop(BaseException):  # tune.report raises SystemExit; any exception from a handler is the same
        pass

    def stop_at_first_evaluation(event: ev.Event) -> None:
        if isinstance(event, ev.Evaluated) and event.tag == "periodic":
            raise Stop

    job = tiny_job("stopped", spec__resources__workers=1)
    with pytest.raises(Stop):
        run(job, in_process=True, on_event=stop_at_first_evaluation)
    assert not [t for t in threading.enumerate() if t.name == "kubetrain-fit"]  # ended, not left running
    root = str(pathlib.Path(job.spec.checkpoint.storage) / job.name)
    assert checkpoint.steps_in(root) == [2, 4]  # nothing trained (or saved) after the evaluation at step 4
    assert checkpoint.latest(root) == checkpoint.checkpoint_dir(root, 4)  # complete (its state file written)
    assert not pathlib.Path(root, "final").exists()  # a stopped run publishes no final model

    again = run(
        tiny_job("after-stop", spec__resources__workers=1), in_process=True
    )  # the process is reusable
    assert again.succeeded, again.error


def test_a_local_model_the_strategy_cannot_split_is_refused_before_anything_starts(tiny_job, tmp_path):
    """The spec layer reads no files, so validation cannot see a local model's architecture: run_job checks it
    once the model is resolved, before Ray, MLflow or a worker starts (the CLI shows a JobError, exit 1)."""
    import json

    from kubetrain.runtime.run.job import JobError

    model = tmp_path / "bert-like"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "bert", "num_hidden_layers": 2}))
    job = tiny_job(
        "unsplittable",
        spec__model={"name_or_path": str(model)},
        spec__strategy={"type": "pipeline", "stages": 2, "micro_batches": 4},
    )
    with pytest.raises(JobError, match="cannot split model_type 'bert'"):
        run(job)
    assert not (pathlib.Path(job.spec.checkpoint.storage).parent / "root" / "mlflow.db").exists()
