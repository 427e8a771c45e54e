"""A NaN in a real 2-worker DDP run: `kubetrain run` exits 2, nothing after the last good step is saved, and
the MLflow run ends FAILED with the diagnosis as tags (train/health.py, run/diagnosis.py)."""

from __future__ import annotations

import pathlib

import pytest
import yaml

pytestmark = pytest.mark.ray


def test_a_nan_loss_on_one_rank_stops_every_rank_with_a_diagnosis(ray_session, tiny_job, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    from kubetrain.cli.main import main
    from kubetrain.runtime.train import checkpoint as ckpt

    # The last rank's loss turns NaN at step 5 (after the step-4 checkpoint); a worker fault would be retried
    # once (max_worker_failures 1) and resume at step 4: a NaN must not be.
    job = tiny_job(
        "nan",
        spec__env=[{"name": "KUBETRAIN_NAN_AT_STEP", "value": "5"}],
        spec__lifecycle__max_worker_failures=1,
    )
    path = tmp_path / "nan.yaml"
    path.write_text(yaml.safe_dump(job.model_dump(mode="json", exclude_none=True)))
    code = main(["run", str(path), "--root", str(tmp_path / "root")])
    out = capsys.readouterr().out
    assert code == 2, out
    assert "training stopped at step 5: the training loss was NaN" in out
    assert "Resuming" not in out  # not retried as a worker fault

    run_root = pathlib.Path(job.spec.checkpoint.storage) / "nan"
    assert ckpt.steps_in(str(run_root)) == [2, 4]  # nothing written from the bad step, nor after it
    assert not (run_root / "final").exists()

    client = MlflowClient(job.spec.tracking.tracking_uri)
    (mrun,) = client.search_runs(
        [client.get_experiment_by_name(job.spec.tracking.experiment or job.name).experiment_id],
        filter_string="tags.`kubetrain.health` = 'nan_loss'",
    )
    assert mrun.info.status == "FAILED"
    diagnosis = mrun.data.tags["kubetrain.diagnosis"]
    assert (
        "step 5" in diagnosis
        and f"last good checkpoint is step 4 ({run_root / 'checkpoint_00000004'})" in diagnosis
    )
    assert "learning rate" in diagnosis and "spec.training.learning_rate (now 0.01" in diagnosis
    assert sorted(m.step for m in client.get_metric_history(mrun.info.run_id, "train_loss")) == [1, 2, 3, 4]


def test_overfitting_reaches_the_summary_and_mlflow_tags_as_a_warning(tiny_job, capsys):
    from mlflow.tracking import MlflowClient

    from kubetrain.runtime.run.job import run_job

    # A full fine-tune memorising 8 examples at a constant learning rate: training loss falls while validation
    # loss rises from step 12 on (fixed seed); in this process, world size 1 (no Ray workers to start).
    job = tiny_job(
        "overfit",
        spec__data__max_train_samples=8,
        spec__peft={"type": "none"},
        spec__resources__workers=1,
        spec__training__max_steps=20,
        spec__training__learning_rate=0.05,
        spec__training__schedule="constant",
        spec__training__warmup_steps=0,
        spec__training__health={"overfitting_patience": 2},
        spec__checkpoint__every=20,
    )
    root = pathlib.Path(job.spec.checkpoint.storage).parent / "root"
    result = run_job(job, local_root=str(root), in_process=True)
    assert result.succeeded, result.error
    warning = result.warnings["overfitting"]
    assert "validation loss rose" in warning and "at steps 12, 16, 20" in warning
    assert "set spec.training.early_stopping" in warning
    assert f"Warning (overfitting): {warning}" in capsys.readouterr().out.replace("\n", "")

    mrun = MlflowClient(result.tracking_uri).get_run(result.mlflow_run_id)
    assert mrun.info.status == "FINISHED"
    assert mrun.data.tags["kubetrain.health"] == "warning"
    assert mrun.data.tags["kubetrain.warning.overfitting"] == warning
