"""QLoRA under DDP with two Ray Train workers on CPU (gloo): every rank builds its own 4-bit base."""

from __future__ import annotations

import pathlib

import pytest

pytest.importorskip("bitsandbytes")
pytestmark = pytest.mark.ray


def test_qlora_trains_under_ddp_on_two_cpu_workers(ray_session, tiny_job):
    from kubetrain.runtime.run.job import run_job

    job = tiny_job(
        "ddp-qlora",
        spec__peft={
            "type": "qlora",
            "r": 4,
            "alpha": 8,
            "target_modules": "all-linear",
            "merge_on_save": True,
        },
        spec__model__from_config={
            "architecture": "llama",
            "hidden_size": 64,
            "num_layers": 2,
            "num_heads": 4,
        },
    )
    result = run_job(
        job, local_root=str(pathlib.Path(job.spec.checkpoint.storage).parent / "root"), show=False
    )
    assert result.succeeded, result.error
    assert result.after["eval_loss"] < result.before["eval_loss"]
    assert len(result.memory) == 2 and result.memory[0] == result.memory[1]
    final = pathlib.Path(result.final_dir)
    assert (final / "adapter_config.json").is_file() and (final / "merged" / "model.safetensors").is_file()
