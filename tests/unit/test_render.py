"""The renderer: TrainingJob (+ platform config) -> KubeRay RayJob and spec ConfigMap, checked against KubeRay."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys

import pytest
import yaml

from kubetrain.cli.files import read_job
from kubetrain.render import PlatformConfig, SecretRef, rayjob_name, render, resolved_spec
from kubetrain.render.rayjob import cpu_quantity
from kubetrain.schema.openapi import crd_validator, errors
from kubetrain.spec import validate_job
from tests.conftest import MINIMAL, ROOT, SHARED

KUBERAY_RAYJOBS = SHARED / "kuberay" / "ray.io_rayjobs.yaml"
GOLDEN = ROOT / "tests" / "golden"
JOBS = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "jobs").rglob("*.yaml"))
K8S_JOBS = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "jobs" / "k8s").glob("*.yaml"))
UID = "00000000-0000-4000-8000-000000000000"
needs_kuberay = pytest.mark.skipif(
    not KUBERAY_RAYJOBS.is_file(),
    reason=f"KubeRay CRDs not found at {KUBERAY_RAYJOBS} (../shared/kuberay absent)",
)


def job_from(path: str, namespace: str = "team-a"):
    job = read_job(str(ROOT / path))
    job.metadata.namespace = namespace
    job.metadata.uid = UID
    return job


def mini(**spec_changes):
    data = copy.deepcopy(MINIMAL)
    data["metadata"].update(namespace="ns", uid=UID)
    for path, value in spec_changes.items():
        cur = data["spec"]
        keys = path.split("__")
        for key in keys[:-1]:
            cur = cur.setdefault(key, {})
        cur[keys[-1]] = value
    return validate_job(data)


def rayjob_of(job, platform=None):
    configmap, rayjob = render(job, platform)
    return rayjob


def workers_of(rayjob):
    return rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]


@pytest.fixture(scope="module")
def kuberay():
    fast = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the KubeRay CRD is 1 MB of YAML
    return crd_validator(yaml.load(KUBERAY_RAYJOBS.read_text(), Loader=fast), "v1")


@needs_kuberay
@pytest.mark.parametrize("path", JOBS)
def test_every_example_renders_a_rayjob_kuberay_accepts(path, kuberay):
    rayjob = rayjob_of(job_from(path))
    assert errors(kuberay, rayjob) == []


@needs_kuberay
def test_the_kuberay_check_can_fail(kuberay):
    rayjob = rayjob_of(mini())
    rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] = "two"
    rayjob["spec"]["shutdownAfterJobFinish"] = True
    found = errors(kuberay, rayjob)
    assert any("replicas" in f for f in found) and any("shutdownAfterJobFinish" in f for f in found), found


@pytest.mark.parametrize("path", K8S_JOBS)
def test_golden(path):
    golden = GOLDEN / (path.removeprefix("jobs/").replace("/", "__").removesuffix(".yaml") + ".rendered.yaml")
    text = yaml.safe_dump_all(render(job_from(path)), sort_keys=False, width=110)
    if os.environ.get("KUBETRAIN_UPDATE_GOLDEN"):
        golden.write_text(text)
    assert golden.is_file(), f"no golden file {golden.name}: run KUBETRAIN_UPDATE_GOLDEN=1 pytest {__file__}"
    assert text == golden.read_text(), (
        f"{golden.name} differs: review, then KUBETRAIN_UPDATE_GOLDEN=1 to update"
    )


@pytest.mark.parametrize(
    "changes, cpu, memory, gpus, replicas",
    [
        ({}, "1", "8Gi", None, 2),
        ({"resources__workers": 8, "resources__cpus_per_worker": 0.5}, "500m", "8Gi", None, 8),
        ({"resources__gpus_per_worker": 1, "resources__memory_per_worker": "24Gi"}, "1", "24Gi", "1", 2),
        ({"resources__gpus_per_worker": 0.5}, "1", "8Gi", "1", 2),
    ],
)
def test_worker_group_is_sized_from_resources(changes, cpu, memory, gpus, replicas):
    group = workers_of(rayjob_of(mini(**changes)))
    assert (group["replicas"], group["minReplicas"], group["maxReplicas"]) == (replicas, replicas, replicas)
    res = group["template"]["spec"]["containers"][0]["resources"]
    assert res["requests"]["cpu"] == res["limits"]["cpu"] == cpu
    assert res["requests"]["memory"] == res["limits"]["memory"] == memory
    assert res["limits"].get("nvidia.com/gpu") == gpus


def test_placement_image_and_service_account():
    job = mini(resources={"node_selector": {"pool": "train"}, "gpu_type": "H100", "image": "my/img:1",
                          "service_account": "trainer", "tolerations": [
                              {"key": "gpu", "operator": "Exists", "effect": "NoSchedule", "toleration_seconds": 5}]})  # fmt: skip
    pod = workers_of(rayjob_of(job))["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "train", "kubetrain.dev/gpu-type": "H100"}
    assert pod["tolerations"] == [
        {"key": "gpu", "operator": "Exists", "effect": "NoSchedule", "tolerationSeconds": 5}
    ]
    assert pod["containers"][0]["image"] == "my/img:1"
    assert pod["serviceAccountName"] == "trainer"


@pytest.mark.parametrize(
    "lifecycle, expected",
    [
        ({}, {"backoffLimit": 0, "suspend": False, "ttl": 3600, "activeDeadlineSeconds": None}),
        ({"suspend": True, "backoff_limit": 3, "active_deadline_seconds": 60, "ttl_seconds_after_success": 0,
          "ttl_seconds_after_failure": 10},
         {"backoffLimit": 3, "suspend": True, "ttl": 10, "activeDeadlineSeconds": 60}),
        ({"ttl_seconds_after_success": 900, "ttl_seconds_after_failure": 0},
         {"backoffLimit": 0, "suspend": False, "ttl": 900, "activeDeadlineSeconds": None}),
    ],
)  # fmt: skip
def test_lifecycle(lifecycle, expected):
    """KubeRay shuts the cluster down after the longer TTL; the operator keeps the shorter one (test_decide)."""
    spec = rayjob_of(mini(lifecycle=lifecycle))["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert "deletionStrategy" not in spec  # KubeRay: mutually exclusive with shutdownAfterJobFinishes
    assert spec["ttlSecondsAfterFinished"] == expected["ttl"]
    assert spec["backoffLimit"] == expected["backoffLimit"]
    assert spec["suspend"] == expected["suspend"]
    assert spec.get("activeDeadlineSeconds") == expected["activeDeadlineSeconds"]


@pytest.mark.parametrize(
    "resources, labels, pod_priority",
    [
        ({}, {}, None),
        ({"queue": "team-a"}, {"kueue.x-k8s.io/queue-name": "team-a"}, None),
        ({"queue": "team-a", "priority_class": "high"},
         {"kueue.x-k8s.io/queue-name": "team-a", "kueue.x-k8s.io/priority-class": "high"}, None),
        ({"priority_class": "high"}, {}, "high"),
    ],
)  # fmt: skip
def test_kueue_and_priority(resources, labels, pod_priority):
    rayjob = rayjob_of(mini(resources=resources))
    got = {k: v for k, v in rayjob["metadata"]["labels"].items() if k.startswith("kueue.")}
    assert got == labels
    assert workers_of(rayjob)["template"]["spec"].get("priorityClassName") == pod_priority


def test_labels_owner_and_entrypoint():
    configmap, rayjob = render(mini())
    for obj in (configmap, rayjob):
        assert obj["metadata"]["labels"]["app.kubernetes.io/instance"] == "t"
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "kubetrain-operator"
        assert obj["metadata"]["ownerReferences"] == [{"apiVersion": "kubetrain.dev/v1alpha1", "kind": "TrainingJob",
                                                       "name": "t", "uid": UID, "controller": True,
                                                       "blockOwnerDeletion": True}]  # fmt: skip
    assert rayjob["spec"]["entrypoint"] == "python -m kubetrain.runtime /etc/kubetrain/job.yaml"
    head = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    assert [v for v in head["volumes"] if "configMap" in v] == [
        {"name": "kubetrain-spec", "configMap": {"name": configmap["metadata"]["name"]}}
    ]
    env = {e["name"]: e for e in head["containers"][0]["env"]}
    assert env["KUBETRAIN_JOB_NAME"]["value"] == "t"
    assert env["KUBETRAIN_JOB_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}


def test_no_owner_reference_without_uid():
    job = mini()
    job.metadata.uid = None
    assert all("ownerReferences" not in o["metadata"] for o in render(job))


def test_configmap_carries_the_resolved_spec():
    platform = PlatformConfig(storage="s3://bucket/runs", mlflow_tracking_uri="http://mlflow:5000")
    configmap, _ = render(mini(), platform)
    data = yaml.safe_load(configmap["data"]["job.yaml"])
    job = validate_job(data)
    assert job.spec.checkpoint.storage == "s3://bucket/runs"
    assert job.spec.tracking.tracking_uri == "http://mlflow:5000"
    assert set(data["metadata"]) == {"name", "namespace"}
    own = mini(checkpoint={"storage": "pvc://claim/runs"}, tracking={"tracking_uri": "http://other"})
    assert resolved_spec(own, platform)["spec"]["checkpoint"]["storage"] == "pvc://claim/runs"
    assert resolved_spec(own, platform)["spec"]["tracking"]["tracking_uri"] == "http://other"


SENTINEL = "s3cr3t-VALUE-that-must-never-render"


def test_no_secret_value_reaches_a_rendered_manifest(monkeypatch):
    for name in ("HF_TOKEN", "AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(name, SENTINEL)
    platform = PlatformConfig(secrets=[
        SecretRef(name="s3", keys={"AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "key"}),
        SecretRef(name="mlflow", keys={"MLFLOW_TRACKING_PASSWORD": "password"}),
    ])  # fmt: skip
    objects = []
    for path in JOBS:
        objects += render(job_from(path), platform)
    text = yaml.safe_dump_all(objects)
    assert SENTINEL not in text
    secretish = ("TOKEN", "SECRET", "PASSWORD", "ACCESS_KEY")
    for obj in objects:
        if obj["kind"] != "RayJob":
            continue
        for group in [
            obj["spec"]["rayClusterSpec"]["headGroupSpec"],
            *obj["spec"]["rayClusterSpec"]["workerGroupSpecs"],
        ]:
            env = group["template"]["spec"]["containers"][0]["env"]
            for var in env:
                if any(s in var["name"] for s in secretish):
                    assert "value" not in var and "secretKeyRef" in var["valueFrom"], var
            names = [v["name"] for v in env]
            assert {"AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_PASSWORD"} <= set(names)
            assert len(names) == len(set(names))


def test_the_jobs_own_secret_reference_wins_over_the_platform():
    job = mini(env=[{"name": "HF_TOKEN", "secret_key_ref": {"name": "mine", "key": "t"}}])
    platform = PlatformConfig(secrets=[SecretRef(name="platform", keys={"HF_TOKEN": "token"})])
    env = workers_of(rayjob_of(job, platform))["template"]["spec"]["containers"][0]["env"]
    assert [v["valueFrom"]["secretKeyRef"]["name"] for v in env if v["name"] == "HF_TOKEN"] == ["mine"]


@pytest.mark.parametrize(
    "name, expected",
    [
        ("t", "t"),
        ("a" * 47, "a" * 47),
        ("a" * 63, None),
        ("7b-lora", None),
        ("0" * 63, None),
        ("a-" * 31 + "b", None),
    ],
)
def test_rayjob_names_are_deterministic_dns1035_and_short(name, expected):
    got = rayjob_name(name)
    assert got == rayjob_name(name) and len(got) <= 47
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", got), got  # KubeRay: a DNS-1035 label
    if expected:
        assert got == expected
    else:
        assert got != name


def test_rayjob_names_do_not_collide():
    """Names that fit map to themselves; every other name carries a hash of the whole name."""
    names = [
        "a" * 62,
        "a" * 63,
        "7b",
        "tj-7b",
        "0-lora",
        "00-lora",
        "a" * 40 + "-x",
        "a" * 40 + "-y",
        "9" * 63,
    ]
    mapped = [rayjob_name(n) for n in names]
    assert len(set(mapped)) == len(names), dict(zip(names, mapped))


@pytest.mark.parametrize(
    "cpus, quantity", [(1.0, "1"), (4, "4"), (0.5, "500m"), (2.25, "2250m"), (0.001, "1m")]
)
def test_cpu_quantity(cpus, quantity):
    assert cpu_quantity(cpus) == quantity


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "kubetrain.cli.main", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)  # fmt: skip


def test_cli_render_prints_the_objects():
    r = run_cli("render", "jobs/k8s/smollm2-lora.yaml", "-n", "team-a", "--set", "spec.resources.workers=3")
    assert r.returncode == 0, r.stderr
    configmap, rayjob = yaml.safe_load_all(r.stdout)
    assert (configmap["kind"], rayjob["kind"]) == ("ConfigMap", "RayJob")
    assert rayjob["metadata"]["namespace"] == "team-a"
    assert workers_of(rayjob)["replicas"] == 3


def test_cli_render_reports_spec_problems_one_per_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump({**MINIMAL, "spec": {**MINIMAL["spec"], "resources": {"workers": 0, "cpus": 1}}})
    )
    r = run_cli("render", str(bad))
    assert r.returncode == 1 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 2 and "Traceback" not in r.stderr
    assert any("spec.resources.workers" in line for line in lines)
    assert any("spec.resources.cpus" in line for line in lines)


def test_platform_config_loads_from_file_and_env(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBETRAIN_CONFIG", raising=False)
    assert PlatformConfig.load() == PlatformConfig()
    path = tmp_path / "platform.yaml"
    path.write_text(yaml.safe_dump({"image": "reg/kt:9", "storage": "pvc://runs", "secrets": [
        {"name": "hub", "keys": {"HF_TOKEN": "token"}}]}))  # fmt: skip
    monkeypatch.setenv("KUBETRAIN_CONFIG", str(path))
    platform = PlatformConfig.load()
    assert (platform.image, platform.storage, platform.secrets[0].name) == ("reg/kt:9", "pvc://runs", "hub")
    r = run_cli("render", "jobs/quickstart.yaml", "--config", str(path))
    assert r.returncode == 0, r.stderr
    configmap, rayjob = yaml.safe_load_all(r.stdout)
    assert workers_of(rayjob)["template"]["spec"]["containers"][0]["image"] == "reg/kt:9"
    assert yaml.safe_load(configmap["data"]["job.yaml"])["spec"]["checkpoint"]["storage"] == "pvc://runs"
    path.write_text(yaml.safe_dump({"imagee": "x"}))
    r = run_cli("render", "jobs/quickstart.yaml", "--config", str(path))
    assert r.returncode == 1 and "Traceback" not in r.stderr and "imagee" in r.stderr


def test_pvc_storage_is_mounted_on_every_ray_pod():
    from kubetrain.render.platform import PlatformConfig
    from kubetrain.render.rayjob import render_rayjob
    from kubetrain.spec import load_job
    from tests.conftest import ROOT

    job = load_job(
        (ROOT / "jobs/quickstart.yaml").read_text(),
        overrides=["spec.checkpoint.storage=pvc://training-data/runs"],
    )
    cluster = render_rayjob(job, PlatformConfig())["spec"]["rayClusterSpec"]
    for pod in [
        cluster["headGroupSpec"]["template"]["spec"],
        cluster["workerGroupSpecs"][0]["template"]["spec"],
    ]:
        assert {"name": "kubetrain-storage", "persistentVolumeClaim": {"claimName": "training-data"}} in pod[
            "volumes"
        ]
        main = pod["containers"][0]
        assert {"name": "kubetrain-storage", "mountPath": "/mnt/pvc/training-data"} in main["volumeMounts"]
        assert {"name": "KUBETRAIN_PVC_ROOT", "value": "/mnt/pvc"} in main["env"]
