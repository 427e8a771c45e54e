"""QLoRA on CUDA (bf16 compute, NF4 + double quantization): trains, and holds its base in about a quarter of
the bytes LoRA over a bf16 base takes (the Memory event, per rank). Skipped cleanly without a GPU."""

from __future__ import annotations

import pathlib

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("bitsandbytes")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.ray,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

# big enough that the linear weights, not embeddings and norms, dominate the parameter bytes
MODEL = {"architecture": "llama", "hidden_size": 256, "num_layers": 4, "num_heads": 4}


def _run(tiny_job, name, peft, workers=1):
    from kubetrain.runtime.run.job import run_job

    job = tiny_job(
        name,
        spec__model__from_config=MODEL,
        spec__model__dtype="bfloat16",
        spec__peft=peft,
        spec__resources={"workers": workers, "gpus_per_worker": 1, "cpus_per_worker": 1},
        spec__training__precision="bf16",
    )
    result = run_job(
        job, local_root=str(pathlib.Path(job.spec.checkpoint.storage).parent / "root"), show=False
    )
    assert result.succeeded, result.error
    return result


def test_qlora_on_one_gpu_trains_and_its_base_takes_a_fraction_of_lora_memory(ray_session, tiny_job):
    lora = {"type": "lora", "r": 4, "alpha": 8, "target_modules": "all-linear"}
    qlora = {**lora, "type": "qlora", "compute_dtype": "bfloat16", "merge_on_save": True}
    q = _run(tiny_job, "gpu-qlora", qlora)
    assert q.after["eval_loss"] < q.before["eval_loss"]
    base = _run(tiny_job, "gpu-lora-bf16", lora)
    q_bytes, l_bytes = q.memory[0]["param_bytes"], base.memory[0]["param_bytes"]
    print(f"param bytes per rank: qlora {q_bytes}, lora over bf16 {l_bytes} ({q_bytes / l_bytes:.2f}x)")
    assert q_bytes < 0.6 * l_bytes  # linear weights at ~4.5 bits instead of 16; embeddings stay bf16/fp32
    final = pathlib.Path(q.final_dir)
    assert (final / "adapter_config.json").is_file() and (final / "merged" / "config.json").is_file()


def test_qlora_under_ddp_on_two_gpus(ray_session, tiny_job):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs for NCCL collectives")
    qlora = {"type": "qlora", "r": 4, "alpha": 8, "target_modules": "all-linear"}
    result = _run(tiny_job, "gpu-qlora-ddp", qlora, workers=2)
    assert result.after["eval_loss"] < result.before["eval_loss"]
    assert len(result.memory) == 2 and all(m["param_bytes"] > 0 for m in result.memory)
