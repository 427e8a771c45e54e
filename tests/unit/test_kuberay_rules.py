"""Every RayJob kubetrain renders passes KubeRay v1.7.0's controller validation, not only its CRD schema.

The rules are a Python port of ray-operator/controllers/ray/utils/validation.go (tests/kuberay/validation.py,
which cites the tag and commit); the second table shows the port rejects what KubeRay rejects, with its words.
"""

from __future__ import annotations

import copy

import pytest
import yaml

from kubetrain.render import PlatformConfig, render
from kubetrain.spec import validate_job
from tests.conftest import MINIMAL, ROOT
from tests.kuberay.validation import MAX_RAYJOB_NAME, validate_rayjob

EXAMPLES = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "jobs").rglob("*.yaml"))
SWEEP = {
    "parameters": {"training.learning_rate": {"type": "loguniform", "low": 1e-4, "high": 1e-2}},
    "trials": 6,
    "max_concurrent": 3,
}


def variant(name: str = "t", **spec) -> dict:
    body = copy.deepcopy(MINIMAL)
    body["metadata"].update(name=name, namespace="team-a", uid="00000000-0000-4000-8000-000000000001")
    body["spec"].update(spec)
    return body


def rayjob(body: dict, platform: PlatformConfig | None = None) -> dict:
    return render(validate_job(body), platform)[-1]


VARIANTS = {
    "defaults": variant(),
    "suspended": variant(lifecycle={"suspend": True}),
    "kueue queue": variant(resources={"queue": "team-a", "priority_class": "high"}),
    "kueue queue, suspended": variant(lifecycle={"suspend": True}, resources={"queue": "team-a"}),
    "ttl 0 both": variant(lifecycle={"ttl_seconds_after_success": 0, "ttl_seconds_after_failure": 0}),
    "ttl 0 success, long failure": variant(lifecycle={"ttl_seconds_after_success": 0, "ttl_seconds_after_failure": 86400}),
    "ttl long success, 0 failure": variant(lifecycle={"ttl_seconds_after_success": 900, "ttl_seconds_after_failure": 0}),
    "retries and deadline": variant(lifecycle={"backoff_limit": 5, "active_deadline_seconds": 1}),
    "63-character name": variant(name="a" * 63),
    "48-character name": variant(name="b" * 48),
    "digit-leading name": variant(name="7b-lora"),
    "all digits": variant(name="2026"),
    "sweep": variant(data={"train": "t.jsonl", "validation_split": 0.1}, sweep=SWEEP),
    "sweep of one trial at a time": variant(data={"train": "t.jsonl", "validation_split": 0.1}, sweep={**SWEEP, "max_concurrent": 1}),
    "pipeline": variant(
        model={"from_config": {"architecture": "llama", "hidden_size": 32, "num_layers": 4, "num_heads": 4},
               "tokenizer": {"type": "bpe", "vocab_size": 300}},
        strategy={"type": "pipeline", "stages": 2, "micro_batches": 2},
        resources={"workers": 4},
        peft={"type": "none"},
    ),
    "gpu, fractional": variant(resources={"workers": 3, "gpus_per_worker": 0.5, "cpus_per_worker": 0.5, "gpu_type": "A100",
                                          "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]}),
    "pvc storage": variant(checkpoint={"storage": "pvc://runs/team-a"}),
}  # fmt: skip


@pytest.mark.parametrize("path", EXAMPLES)
def test_every_example_renders_a_rayjob_kuberays_controller_accepts(path):
    body = yaml.safe_load((ROOT / path).read_text())
    body["metadata"].update(namespace="team-a", uid="00000000-0000-4000-8000-000000000002")
    assert validate_rayjob(rayjob(body)) is None


@pytest.mark.parametrize("name", VARIANTS)
def test_every_mode_renders_a_rayjob_kuberays_controller_accepts(name):
    platform = PlatformConfig(storage="s3://runs", mlflow_tracking_uri="http://mlflow:5000")
    assert validate_rayjob(rayjob(VARIANTS[name], platform)) is None


def test_a_sweeps_cluster_holds_its_concurrent_trials_and_their_drivers():
    spec = rayjob(VARIANTS["sweep"])["spec"]["rayClusterSpec"]
    group = spec["workerGroupSpecs"][0]
    assert (
        group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 3 * 2
    )  # max_concurrent x workers
    head = spec["headGroupSpec"]["rayStartParams"]
    assert head["num-cpus"] == "1"  # 3 trial drivers x 0.1 CPU, rounded up to what `ray start` takes
    assert yaml.safe_load(yaml.safe_load(head["resources"])) == {"kubetrain_trial_driver": 3}


def test_a_sweep_too_big_for_one_cluster_is_refused_naming_the_field():
    body = variant(data={"train": "t.jsonl", "validation_split": 0.1}, resources={"workers": 512},
                   sweep={**SWEEP, "trials": 100, "max_concurrent": 16})  # fmt: skip
    with pytest.raises(Exception) as raised:
        validate_job(body)
    text = str(raised.value)
    assert "sweep.max_concurrent" in text and "8192 worker pods" in text and "at most 8" in text


def test_gpu_workers_get_whole_gpus_and_a_memory_backed_dev_shm():
    pod = rayjob(VARIANTS["gpu, fractional"])["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"][
        "spec"
    ]
    main = pod["containers"][0]
    assert main["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"name": "shared-mem", "mountPath": "/dev/shm"} in main["volumeMounts"]
    shm = next(v for v in pod["volumes"] if v["name"] == "shared-mem")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": main["resources"]["limits"]["memory"]}


def kuberay_ok() -> dict:
    return rayjob(variant())


def broken(change) -> dict:
    obj = kuberay_ok()
    change(obj)
    return obj


def _set(path: str, value):
    def change(obj):
        *keys, last = path.split(".")
        cur = obj
        for key in keys:
            cur = cur[int(key)] if isinstance(cur, list) else cur[key]
        cur[last] = value

    return change


RULES = {
    "deletionRules beside shutdownAfterJobFinishes (kubetrain's old rendering)": (
        _set("spec.deletionStrategy", {"deletionRules": [
            {"policy": "DeleteCluster", "condition": {"jobStatus": "SUCCEEDED", "ttlSeconds": 600}},
            {"policy": "DeleteCluster", "condition": {"jobStatus": "FAILED", "ttlSeconds": 3600}}]}),
        "spec.shutdownAfterJobFinishes and spec.deletionStrategy.deletionRules are mutually exclusive",
    ),
    "suspend without shutdownAfterJobFinishes": (
        lambda o: o["spec"].update(suspend=True, shutdownAfterJobFinishes=False, ttlSecondsAfterFinished=0),
        "a RayJob with shutdownAfterJobFinishes set to false is not allowed to be suspended",
    ),
    "a TTL without shutdownAfterJobFinishes": (
        _set("spec.shutdownAfterJobFinishes", False),
        "a RayJob with shutdownAfterJobFinishes set to false cannot have TTLSecondsAfterFinished",
    ),
    "a digit-leading name": (_set("metadata.name", "7b-lora"), "RayJob name should be a valid DNS1035 label"),
    "a 48-character name": (_set("metadata.name", "a" * (MAX_RAYJOB_NAME + 1)), "RayJob name should be no more than 47 characters"),
    "a worker group without maxReplicas": (
        lambda o: o["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].pop("maxReplicas"),
        "worker group workers must set both minReplicas and maxReplicas when autoscaling is disabled",
    ),
    "minReplicas above maxReplicas": (
        _set("spec.rayClusterSpec.workerGroupSpecs.0.minReplicas", 9),
        "worker group workers has minReplicas 9 greater than maxReplicas 2",
    ),
    "Ray resources twice": (
        _set("spec.rayClusterSpec.headGroupSpec.resources", {"CPU": "1"}),
        "resource fields should not be set in both rayStartParams and Resources for Head group",
    ),
    "labels in rayStartParams": (
        _set("spec.rayClusterSpec.headGroupSpec.rayStartParams.labels", "a=b"),
        "rayStartParams['labels'] is not supported for Head group",
    ),
    "autoscaler v2 env without autoscaling": (
        lambda o: o["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"].append(
            {"name": "RAY_enable_autoscaler_v2", "value": "1"}),
        "cannot be set to '1' when enableInTreeAutoscaling is false",
    ),
    "activeDeadlineSeconds 0": (_set("spec.activeDeadlineSeconds", 0), "activeDeadlineSeconds must be a positive integer"),
    "negative backoffLimit": (_set("spec.backoffLimit", -1), "backoffLimit must be a positive integer"),
    "retries in InteractiveMode": (
        lambda o: o["spec"].update(submissionMode="InteractiveMode", backoffLimit=1),
        "BackoffLimit is incompatible with InteractiveMode",
    ),
    "deletion rules out of order": (
        lambda o: o["spec"].update(shutdownAfterJobFinishes=False, ttlSecondsAfterFinished=0, deletionStrategy={"deletionRules": [
            {"policy": "DeleteCluster", "condition": {"jobStatus": "FAILED", "ttlSeconds": 60}},
            {"policy": "DeleteWorkers", "condition": {"jobStatus": "FAILED", "ttlSeconds": 600}}]}),
        "for JobStatus 'FAILED': DeleteCluster TTL (60) must be >= DeleteWorkers TTL (600)",
    ),
    "a redis address without fault tolerance": (
        lambda o: o["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"].append(
            {"name": "RAY_REDIS_ADDRESS", "value": "redis:6379"}),
        "RAY_REDIS_ADDRESS is set which implicitly enables GCS fault tolerance",
    ),
}  # fmt: skip


@pytest.mark.parametrize("rule", RULES)
def test_the_port_rejects_what_kuberay_rejects_with_its_message(rule):
    change, message = RULES[rule]
    assert validate_rayjob(kuberay_ok()) is None
    got = validate_rayjob(broken(change))
    assert got is not None and message in got, got
