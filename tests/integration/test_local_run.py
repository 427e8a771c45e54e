"""Real 2-worker Ray Train runs (DDP over gloo) of a tiny model: outputs, MLflow contents, resume, failures."""

from __future__ import annotations

import json
import os
import pathlib

import pytest

pytestmark = pytest.mark.ray


def run(job, **kw):
    from kubetrain.runtime.run.job import run_job

    return run_job(
        job, local_root=str(pathlib.Path(job.spec.checkpoint.storage).parent / "root"), show=False, **kw
    )


def test_run_saves_adapter_checkpoints_and_tracks_everything_in_mlflow(ray_session, tiny_job):
    from mlflow.tracking import MlflowClient

    job = tiny_job("tracked")
    result = run(job)
    assert result.succeeded, result.error
    assert result.steps == 8
    # learned something: validation loss went down
    assert result.after["eval_loss"] < result.before["eval_loss"]
    # final adapter + tokenizer, written whole
    final = pathlib.Path(result.final_dir)
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= {
        p.name for p in final.iterdir()
    }
    # the best model (lowest eval_loss) is kept whole beside the final one
    best = json.loads((pathlib.Path(result.best_dir) / "kubetrain_model.json").read_text())
    assert best["metric"] == "eval_loss" and best["step"] in (4, 8)
    periodic = {h["step"]: h["eval_loss"] for h in result.history if "eval_loss" in h and h["step"] > 0}
    assert best["value"] == pytest.approx(min(periodic.values())) and periodic[best["step"]] == best["value"]
    assert (pathlib.Path(result.best_dir) / "adapter_model.safetensors").exists()
    # checkpoints every 2 steps, keep_last 2
    run_dir = pathlib.Path(result.run_dir)
    assert sorted(p.name for p in run_dir.glob("checkpoint_0*")) == [
        "checkpoint_00000006",
        "checkpoint_00000008",
    ]
    ckpt = run_dir / "checkpoint_00000008"
    assert {"weights.pt", "optimizer.pt", "trainer_state.json", "rng_rank0.pt", "rng_rank1.pt"} <= {
        p.name for p in ckpt.iterdir()
    }

    client = MlflowClient(result.tracking_uri)
    mrun = client.get_run(result.mlflow_run_id)
    assert mrun.info.status == "FINISHED"
    params = mrun.data.params
    assert params["spec.training.learning_rate"] == "0.01"
    assert params["spec.peft.target_modules"] == '["q_proj", "v_proj"]'
    assert params["spec.resources.workers"] == "2"
    tags = mrun.data.tags
    assert tags["kubetrain.version"] and len(tags["data.fingerprint"]) == 64
    assert tags["version.torch"].startswith("2.") and tags["version.ray"] == "2.60.0"
    assert int(tags["model.trainable_parameters"]) < int(tags["model.total_parameters"])
    losses = client.get_metric_history(result.mlflow_run_id, "train_loss")
    assert sorted(m.step for m in losses) == list(range(1, 9))
    assert [m.step for m in client.get_metric_history(result.mlflow_run_id, "eval_loss")] == [0, 4, 8]
    assert client.get_metric_history(result.mlflow_run_id, "learning_rate")
    assert any(k.startswith("system/") for k in mrun.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(result.mlflow_run_id)}
    assert {"trainingjob.yaml", "learning_curve.png", "model", "best_model"} <= artifacts
    assert "model/adapter_config.json" in {
        a.path for a in client.list_artifacts(result.mlflow_run_id, "model")
    }


def test_interrupted_run_resumes_where_it_stopped_with_the_same_losses(ray_session, tiny_job, tmp_path):
    reference = run(tiny_job("straight"))
    assert reference.succeeded, reference.error

    marker = tmp_path / "fault-once"
    job = tiny_job("interrupted")
    broken = run(job, worker_env={"KUBETRAIN_FAULT_AT_STEP": "5", "KUBETRAIN_FAULT_MARKER": str(marker)})
    assert not broken.succeeded and marker.exists()
    resumed = run(job)
    assert resumed.succeeded, resumed.error
    assert resumed.resumed_from_step == 4

    def losses(result):
        return {h["step"]: h["train_loss"] for h in result.history if "train_loss" in h}

    after = losses(resumed)
    assert sorted(after) == [5, 6, 7, 8]  # continued after the step-4 checkpoint, nothing redone
    for step in after:
        assert after[step] == pytest.approx(losses(reference)[step], rel=1e-4, abs=1e-5)
    assert resumed.after["eval_loss"] == pytest.approx(reference.after["eval_loss"], rel=1e-4)


def test_killed_worker_is_restarted_by_ray_from_the_last_checkpoint(ray_session, tiny_job, tmp_path):
    marker = tmp_path / "fault-once"
    job = tiny_job("killed", spec__lifecycle__max_worker_failures=1, spec__peft__merge_on_save=True)
    result = run(job, worker_env={"KUBETRAIN_FAULT_AT_STEP": "3", "KUBETRAIN_FAULT_MARKER": str(marker)})
    assert marker.exists(), "the fault hook never fired"
    assert result.succeeded, result.error
    assert result.resumed_from_step == 2
    assert result.steps == 8
    # merge_on_save: a plain model with the adapter folded in, loadable without PEFT
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(pathlib.Path(result.final_dir) / "merged")
    assert not any("lora" in name for name, _ in merged.named_parameters())


def test_classification_metrics_early_stopping_and_unreachable_mlflow(ray_session, tiny_job, sentiment_file):
    job = tiny_job(
        "sentiment",
        spec__task="sequence_classification",
        spec__data={
            "train": sentiment_file,
            "format": "classification",
            "validation_split": 0.25,
            "max_length": 16,
        },
        spec__peft={"type": "none"},
        spec__training={
            "max_steps": 40,
            "batch_size": 8,
            "learning_rate": 0.01,
            "eval_every": 2,
            "seed": 1,
            "early_stopping": {"metric": "eval_accuracy", "mode": "max", "patience": 2},
        },
        spec__tracking={"tracking_uri": "http://127.0.0.1:9"},
    )
    result = run(job)
    assert result.succeeded, result.error
    for metric in ("eval_accuracy", "eval_precision", "eval_recall", "eval_f1", "eval_auc", "eval_loss"):
        assert 0.0 <= result.after[metric] < 10
    assert result.stopped_early and result.steps < 40
    # tracking server down: the run still completed and says where the metrics went
    assert "unreachable" in result.tracking_note
    assert result.tracking_uri.startswith("sqlite:///") and os.path.exists(
        os.path.join(result.run_dir, "metrics.jsonl")
    )
    lines = [json.loads(x) for x in open(os.path.join(result.run_dir, "metrics.jsonl"))]
    assert any("eval_f1" in x for x in lines)
