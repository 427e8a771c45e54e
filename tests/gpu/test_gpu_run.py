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
    from kubetrain.runtime.run.job import run_job

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


@pytest.mark.parametrize(
    "strategy",
    [
        {"type": "ddp"},
        {"type": "deepspeed", "stage": 2},
        {"type": "deepspeed", "stage": 3, "offload_optimizer": "cpu"},
        {"type": "pipeline", "stages": 2, "micro_batches": 2},
    ],
    ids=["ddp", "zero2", "zero3-offload", "pipeline"],
)
def test_strategies_on_gpus_with_nccl_bf16_and_fused_adamw(ray_session, tiny_job, strategy):
    """Every visible GPU a worker (at least 2 for the collectives); bf16; torch's fused AdamW."""
    from kubetrain.runtime.run.job import run_job

    gpus = torch.cuda.device_count()
    if gpus < 2:
        pytest.skip("needs 2 GPUs for NCCL collectives")
    job = tiny_job(
        f"gpu-{strategy['type']}-{strategy.get('stage', 0)}",
        spec__resources={"workers": 2, "gpus_per_worker": 1, "cpus_per_worker": 1},
        spec__training__precision="bf16",
        spec__strategy=strategy,
    )
    result = run_job(
        job, local_root=str(pathlib.Path(job.spec.checkpoint.storage).parent / "root"), show=False
    )
    assert result.succeeded, result.error
    assert result.after["eval_loss"] < result.before["eval_loss"]
    assert result.memory and all(m["param_bytes"] > 0 for m in result.memory)
