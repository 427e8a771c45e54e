"""TrainingJob (+ platform config) -> the KubeRay RayJob and the ConfigMap holding the resolved spec (pure)."""

from __future__ import annotations

import hashlib
import json
import math
import re
from typing import Any

import yaml

from .. import API_VERSION, KIND
from ..spec import TrainingJob
from ..spec.sweep import TRIAL_DRIVER_CPUS, TRIAL_DRIVER_RESOURCE
from .platform import PlatformConfig

RAYJOB_API = "ray.io/v1"
SPEC_DIR = "/etc/kubetrain"
SPEC_FILE = "job.yaml"
MAX_RAYJOB_NAME = 47  # KubeRay derives cluster and submitter names from it
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
SHM_VOLUME = "shared-mem"  # KubeRay's own name for it: KubeRay then sees /dev/shm mounted and adds nothing
LOCAL_STORAGE = ".kubetrain/runs"
PVC_ROOT = "/mnt/pvc"  # the runtime maps pvc://CLAIM/PATH to PVC_ROOT/CLAIM/PATH (KUBETRAIN_PVC_ROOT)


def rayjob_name(job_name: str) -> str:
    """The deterministic RayJob name of a TrainingJob (also across operator restarts).

    KubeRay (utils/validation.go ValidateRayJobMetadata) wants a DNS-1035 label of at most 47 characters; a
    TrainingJob name is an RFC 1123 label of up to 63 and may start with a digit. A name that already fits is
    kept; a longer one keeps a readable prefix and gets a hash of the whole name; a digit-leading one also gets
    the prefix "tj-". Names that fit map to themselves and the others carry a hash of the full name, so two
    TrainingJobs get the same RayJob only by a hash collision, which the operator detects (owner uid).
    """
    if len(job_name) <= MAX_RAYJOB_NAME and DNS1035_LABEL.match(job_name):
        return job_name
    digest = hashlib.sha256(job_name.encode()).hexdigest()[:6]
    stem = job_name if job_name[:1].isalpha() else f"tj-{job_name}"
    return f"{stem[: MAX_RAYJOB_NAME - 7].rstrip('-')}-{digest}"


def configmap_name(job_name: str) -> str:
    return f"{rayjob_name(job_name)}-spec"


def labels(job: TrainingJob) -> dict[str, str]:
    out = dict(job.metadata.labels)
    out.update(
        {
            "app.kubernetes.io/name": "kubetrain",
            "app.kubernetes.io/instance": job.metadata.name,
            "app.kubernetes.io/component": "training",
            "app.kubernetes.io/part-of": "kubetrain",
            "app.kubernetes.io/managed-by": "kubetrain-operator",
            "kubetrain.dev/job": job.metadata.name,
        }
    )
    res = job.spec.resources
    if res.queue:
        out["kueue.x-k8s.io/queue-name"] = res.queue
        if res.priority_class:
            out["kueue.x-k8s.io/priority-class"] = res.priority_class
    return out


def resolved_spec(job: TrainingJob, platform: PlatformConfig) -> dict[str, Any]:
    """The TrainingJob the runtime reads: platform defaults filled in, server-set metadata dropped."""
    data = job.model_dump(mode="json", exclude={"status"}, exclude_none=True)
    meta = data["metadata"]
    data["metadata"] = {k: meta[k] for k in ("name", "namespace", "labels", "annotations") if meta.get(k)}
    spec = data["spec"]
    if platform.storage and spec["checkpoint"].get("storage") == LOCAL_STORAGE:
        spec["checkpoint"]["storage"] = platform.storage
    if platform.mlflow_tracking_uri and not spec["tracking"].get("tracking_uri"):
        spec["tracking"]["tracking_uri"] = platform.mlflow_tracking_uri
    return data


def render(job: TrainingJob, platform: PlatformConfig | None = None) -> list[dict[str, Any]]:
    """The objects to create for a job: [ConfigMap, RayJob], owned by the TrainingJob when it has a uid."""
    platform = platform or PlatformConfig()
    return [render_configmap(job, platform), render_rayjob(job, platform)]


def render_configmap(job: TrainingJob, platform: PlatformConfig) -> dict[str, Any]:
    text = yaml.safe_dump(resolved_spec(job, platform), sort_keys=False)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(job, configmap_name(job.metadata.name)),
        "data": {SPEC_FILE: text},
    }


def render_rayjob(job: TrainingJob, platform: PlatformConfig) -> dict[str, Any]:
    """The RayJob, valid for KubeRay's controller (utils/validation.go at v1.7.0), not only for its CRD.

    Clean-up: KubeRay forbids deletionRules beside shutdownAfterJobFinishes, and refuses `suspend` (which Kueue
    sets on every job it admits) without shutdownAfterJobFinishes. So the RayJob always shuts its cluster down,
    with KubeRay's single TTL set to the longer of the two outcomes' TTLs as a backstop, and the operator deletes
    the cluster earlier when the outcome's own TTL is shorter (control/decide.py).
    """
    life = job.spec.lifecycle
    spec: dict[str, Any] = {
        "entrypoint": f"python -m kubetrain.runtime {SPEC_DIR}/{SPEC_FILE}",
        "submissionMode": "K8sJobMode",
        "shutdownAfterJobFinishes": True,
        "ttlSecondsAfterFinished": max(life.ttl_seconds_after_success, life.ttl_seconds_after_failure),
        "backoffLimit": life.backoff_limit,
        "suspend": life.suspend,
        "rayClusterSpec": {
            "rayVersion": platform.ray_version,
            "headGroupSpec": {
                "rayStartParams": _head_params(job),
                "template": _pod(job, platform, "ray-head", head=True),
            },
            "workerGroupSpecs": [_worker_group(job, platform)],
        },
    }
    if life.active_deadline_seconds:
        spec["activeDeadlineSeconds"] = life.active_deadline_seconds
    return {
        "apiVersion": RAYJOB_API,
        "kind": "RayJob",
        "metadata": _metadata(job, rayjob_name(job.metadata.name)),
        "spec": spec,
    }


def _head_params(job: TrainingJob) -> dict[str, str]:
    """The head runs the job's driver and no training; a sweep's trial drivers also run there."""
    params = {"dashboard-host": "0.0.0.0", "num-cpus": "0"}
    if job.spec.sweep is not None:
        trials = job.spec.sweep.concurrent_trials
        params["num-cpus"] = str(math.ceil(trials * TRIAL_DRIVER_CPUS))
        # KubeRay pastes rayStartParams into a shell command line (`--resources=VALUE`): the JSON goes in
        # double quotes, as in KubeRay's own samples (ray-job.resources.yaml).
        params["resources"] = json.dumps(json.dumps({TRIAL_DRIVER_RESOURCE: trials}))
    return params


def worker_replicas(job: TrainingJob) -> int:
    """Worker pods: one per Ray Train worker, times the trials a sweep runs at once."""
    trials = job.spec.sweep.concurrent_trials if job.spec.sweep is not None else 1
    return trials * job.spec.resources.workers


def _metadata(job: TrainingJob, name: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if job.metadata.namespace:
        meta["namespace"] = job.metadata.namespace
    meta["labels"] = labels(job)
    if job.metadata.uid:
        meta["ownerReferences"] = [
            {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "name": job.metadata.name,
                "uid": job.metadata.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    return meta


def _worker_group(job: TrainingJob, platform: PlatformConfig) -> dict[str, Any]:
    workers = worker_replicas(job)
    return {
        "groupName": "workers",
        "replicas": workers,
        "minReplicas": workers,
        "maxReplicas": workers,
        "rayStartParams": {},
        "template": _pod(job, platform, "ray-worker", head=False),
    }


def _pod(job: TrainingJob, platform: PlatformConfig, container: str, head: bool) -> dict[str, Any]:
    res = job.spec.resources
    main: dict[str, Any] = {
        "name": container,
        "image": res.image or platform.image,
        "imagePullPolicy": platform.image_pull_policy,
        "env": env(job, platform),
        "resources": _resources(job, platform, head),
    }
    pod: dict[str, Any] = {"containers": [main]}
    if head:
        main["ports"] = [
            {"name": "gcs", "containerPort": 6379},
            {"name": "dashboard", "containerPort": 8265},
            {"name": "client", "containerPort": 10001},
        ]
    claim = _storage_claim(job, platform)
    volumes = _volumes(job, head, claim, memory=main["resources"]["limits"]["memory"])
    main["volumeMounts"] = [mount for _, mount in volumes]
    pod["volumes"] = [volume for volume, _ in volumes]
    if claim:
        main["env"].append({"name": "KUBETRAIN_PVC_ROOT", "value": PVC_ROOT})
    account = res.service_account or platform.service_account
    if account:
        pod["serviceAccountName"] = account
    if not head:
        selector = dict(res.node_selector)
        if res.gpu_type:
            selector[platform.gpu_type_label] = res.gpu_type
        if selector:
            pod["nodeSelector"] = selector
        if res.tolerations:
            pod["tolerations"] = [_toleration(t.model_dump()) for t in res.tolerations]
    if res.priority_class and not res.queue:
        pod["priorityClassName"] = res.priority_class
    return {"metadata": {"labels": labels(job)}, "spec": pod}


def _resources(job: TrainingJob, platform: PlatformConfig, head: bool) -> dict[str, Any]:
    """Requests equal to limits (Guaranteed QoS); KubeRay derives `ray start --num-cpus/--num-gpus` from the limits."""
    res = job.spec.resources
    if head:
        amounts = {"cpu": platform.head_cpu, "memory": platform.head_memory}
    else:
        amounts = {
            "cpu": cpu_quantity(res.cpus_per_worker),
            "memory": res.memory_per_worker or platform.worker_memory,
        }
        if res.gpus_per_worker:  # a pod holds whole GPUs; Ray Train still asks for the fraction per worker
            amounts["nvidia.com/gpu"] = str(math.ceil(res.gpus_per_worker))
    return {"requests": dict(amounts), "limits": dict(amounts)}


def _volumes(job: TrainingJob, head: bool, claim: str | None, memory: str) -> list[tuple[dict, dict]]:
    """(volume, mount) pairs: the spec on the head, /dev/shm in memory, PVC checkpoint storage on every pod.

    /dev/shm: the container runtime's default is 64 MB, too small for NCCL's shared-memory transport and
    Ray's object store; a memory-backed emptyDir counts against the pod's memory limit, which bounds it.
    """
    out = [
        (
            {"name": SHM_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": memory}},
            {"name": SHM_VOLUME, "mountPath": "/dev/shm"},
        )
    ]
    if head:
        out.append(
            (
                {"name": "kubetrain-spec", "configMap": {"name": configmap_name(job.metadata.name)}},
                {"name": "kubetrain-spec", "mountPath": SPEC_DIR, "readOnly": True},
            )
        )
    if claim:  # checkpoint storage on a PersistentVolumeClaim: mounted on every Ray pod
        out.append(
            (
                {"name": "kubetrain-storage", "persistentVolumeClaim": {"claimName": claim}},
                {"name": "kubetrain-storage", "mountPath": f"{PVC_ROOT}/{claim}"},
            )
        )
    return out


def env(job: TrainingJob, platform: PlatformConfig) -> list[dict[str, Any]]:
    """Runtime environment: job identity, the spec's variables, platform Secrets (references only)."""
    out: list[dict[str, Any]] = [
        {"name": "KUBETRAIN_JOB_NAME", "value": job.metadata.name},
        {"name": "KUBETRAIN_JOB_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
    ]
    if platform.mlflow_ui_url:
        out.append({"name": "KUBETRAIN_MLFLOW_UI_URL", "value": platform.mlflow_ui_url})
    seen = {e["name"] for e in out}
    for var in job.spec.env:
        if var.secret_key_ref is not None:
            ref = {"name": var.secret_key_ref.name, "key": var.secret_key_ref.key}
            out.append({"name": var.name, "valueFrom": {"secretKeyRef": ref}})
        else:
            out.append({"name": var.name, "value": var.value})
        seen.add(var.name)
    for secret in platform.secrets:
        for name, key in sorted(secret.keys.items()):
            if name not in seen:  # the job's own reference wins
                out.append({"name": name, "valueFrom": {"secretKeyRef": {"name": secret.name, "key": key}}})
                seen.add(name)
    return out


def _storage_claim(job: TrainingJob, platform: PlatformConfig) -> str | None:
    storage = resolved_spec(job, platform)["spec"]["checkpoint"]["storage"]
    return storage.removeprefix("pvc://").split("/")[0] if storage.startswith("pvc://") else None


def cpu_quantity(cpus: float) -> str:
    """1.0 -> '1', 0.5 -> '500m'."""
    millis = round(cpus * 1000)
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


def _toleration(t: dict[str, Any]) -> dict[str, Any]:
    out = {"key": t["key"], "operator": t["operator"], "value": t["value"], "effect": t["effect"]}
    if t["toleration_seconds"] is not None:
        out["tolerationSeconds"] = t["toleration_seconds"]
    return {k: v for k, v in out.items() if v is not None}
