"""GPU runs (NCCL, bf16 autocast): skipped cleanly on machines without CUDA."""

from __future__ import annotations

import pathlib

import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.ray,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_single_gpu_mixed_precision_run(ray_session, tiny_job, precision):
    from kubetrain.runtime.driver import run_job

    job = tiny_job(
        f"gpu-{precision}",
        spec__resources={"workers": 1, "gpus_per_worker": 1, "cpus_per_worker": 1},
        spec__training__precision=precision,
    )
    result = run_job(
        job, local_root=str(pathlib.Path(job.spec.checkpoint.storage).parent / "root"), show=False
    )
    assert result.succeeded, result.error
    assert result.after["eval_loss"] < result.before["eval_loss"]
