"""Remote checkpoint storage on a real S3 API: what a driver on one node reads back from workers on others."""

from __future__ import annotations

import pathlib
import uuid

from kubetrain.runtime import storage


def test_a_published_directory_round_trips_through_s3_and_replaces_the_old_copy(s3_env, tmp_path):
    bucket = f"runs-{uuid.uuid4().hex[:8]}"
    s3_env.create_bucket(bucket)
    model = tmp_path / "final"
    (model / "merged").mkdir(parents=True)
    (model / "adapter_model.safetensors").write_bytes(b"\x00\x01weights")
    (model / "merged" / "config.json").write_text('{"a": 1}')
    uri = storage.join(f"s3://{bucket}/", "job", "final")
    assert uri == f"s3://{bucket}/job/final" and not storage.exists(uri)

    storage.upload_dir(str(model), uri)
    assert storage.exists(uri) and storage.exists(storage.join(uri, "merged", "config.json"))
    (model / "adapter_model.safetensors").write_bytes(b"newer")
    (model / "merged" / "config.json").unlink()
    storage.upload_dir(str(model), uri)  # a later publish replaces the whole copy
    assert not storage.exists(storage.join(uri, "merged", "config.json"))

    back = tmp_path / "driver" / "final"
    assert storage.download_dir(uri, str(back))
    assert (back / "adapter_model.safetensors").read_bytes() == b"newer"
    assert not storage.download_dir(f"s3://{bucket}/job/best", str(tmp_path / "none"))


def test_local_and_pvc_paths_are_not_remote(tmp_path):
    assert not storage.is_remote(str(tmp_path)) and not storage.is_remote("pvc://claim/runs")
    assert storage.is_remote("s3://b/p") and storage.is_remote("gs://b/p")
    assert storage.join(str(tmp_path), "a") == str(pathlib.Path(tmp_path) / "a")
    assert storage.exists(str(tmp_path)) and not storage.exists(str(tmp_path / "missing"))


def test_an_entrypoint_on_s3_data_and_storage_resumes_from_s3_and_publishes_its_model_there(s3_env, tmp_path):
    """What a RayJob's pod runs (`python -m kubetrain.runtime`), with everything on S3: killed after a
    checkpoint, run again from nothing but the bucket, it resumes and its models land in the bucket."""
    import os
    import subprocess
    import sys

    import yaml
    from pyarrow import fs

    from tests.conftest import ROOT
    from tests.integration.conftest import TINY

    bucket = f"kt-{uuid.uuid4().hex[:8]}"
    s3_env.create_bucket(bucket)
    s3, _ = fs.FileSystem.from_uri(f"s3://{bucket}/data")
    for name in ("train.jsonl", "validation.jsonl"):
        with s3.open_output_stream(f"{bucket}/data/{name}") as out:
            out.write((ROOT / "jobs/data/dates" / name).read_bytes())
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBETRAIN_")}
    job = yaml.safe_load(yaml.safe_dump(TINY))
    job["metadata"]["name"] = "on-s3"
    job["spec"]["data"].update(
        train=f"s3://{bucket}/data/train.jsonl", validation=f"s3://{bucket}/data/validation.jsonl"
    )
    job["spec"]["checkpoint"]["storage"] = f"s3://{bucket}/runs"
    job["spec"]["tracking"] = {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"}
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump(job))

    def entrypoint(workdir: str, **extra: str) -> subprocess.CompletedProcess:
        os.makedirs(tmp_path / workdir)  # a new pod: nothing local survives from the last attempt
        return subprocess.run([sys.executable, "-m", "kubetrain.runtime", str(spec)], cwd=tmp_path / workdir,
                              env={**env, **extra}, capture_output=True, text=True, timeout=600)  # fmt: skip

    first = entrypoint(
        "attempt-1", KUBETRAIN_FAULT_AT_STEP="5", KUBETRAIN_FAULT_MARKER=str(tmp_path / "fault")
    )
    assert first.returncode == 2, first.stdout[-3000:] + first.stderr[-3000:]
    assert storage.exists(f"s3://{bucket}/runs/on-s3/checkpoint_00000004")
    second = entrypoint("attempt-2")
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "Resuming from the checkpoint at step 4" in second.stdout
    for leaf in ("final", "best"):
        assert storage.exists(f"s3://{bucket}/runs/on-s3/{leaf}/adapter_model.safetensors")
        assert (tmp_path / "attempt-2/.kubetrain/runs/on-s3" / leaf / "adapter_config.json").is_file()
