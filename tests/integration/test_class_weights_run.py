"""Class weights go through the objective seam on a sharded engine: DeepSpeed ZeRO-2 on two workers trains
with a weight map and logs the resolved weights."""

from __future__ import annotations

import math
import pathlib

import pytest

from tests.integration.test_learning_curve import imbalanced_job

pytestmark = pytest.mark.ray


def test_deepspeed_trains_with_a_class_weight_map(ray_session, tiny_job, tmp_path):
    from mlflow.tracking import MlflowClient

    from kubetrain.runtime.run.job import run_job

    job = imbalanced_job(
        tiny_job,
        tmp_path,
        "weighted",
        {"yes": 3.0},
        training={"eval_every": 4},
        spec__strategy={"type": "deepspeed", "stage": 2},
    )
    root = pathlib.Path(job.spec.checkpoint.storage).parent / "root"
    result = run_job(job, local_root=str(root), show=False)
    assert result.succeeded, result.error
    losses = [h["train_loss"] for h in result.history if "train_loss" in h]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    assert "eval_f1" in result.after
    params = MlflowClient(result.tracking_uri).get_run(result.mlflow_run_id).data.params
    assert (params["class_weight.no"], params["class_weight.yes"]) == ("1", "3")
