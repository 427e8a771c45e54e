"""Install manifests beside the CRD: the operator's namespace, RBAC (least privilege) and Deployment."""

from __future__ import annotations

from typing import Any

from .. import GROUP, __version__
from .crd import PLURAL

NAMESPACE = "kubetrain-system"
NAME = "kubetrain-operator"
# the control image (Dockerfile target `control`): the operator and the API, without the training stack
DEFAULT_IMAGE = f"ghcr.io/kubetrain/kubetrain-control:{__version__}"
METRICS_PORT = 9090
HEALTH_PORT = 8080
LABELS = {"app.kubernetes.io/name": NAME, "app.kubernetes.io/part-of": "kubetrain"}

# Everything the operator does against the API, and nothing more. tests/integration/k8s checks the
# operator's real requests against these rules.
RULES: list[dict[str, Any]] = [
    {"apiGroups": [GROUP], "resources": [PLURAL], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [GROUP], "resources": [f"{PLURAL}/status"], "verbs": ["patch"]},
    {"apiGroups": ["ray.io"], "resources": ["rayjobs"], "verbs": ["get", "list", "watch", "create", "patch"]},
    # clean-up by outcome: a finished job's RayCluster goes when its outcome's TTL has passed (control/decide.py)
    {"apiGroups": ["ray.io"], "resources": ["rayclusters"], "verbs": ["delete"]},
    {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
]


def namespace() -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE, "labels": dict(LABELS)}}


# What the runtime in the Ray pods may do: report progress. Bind it in each team namespace to the
# service account the jobs run as (PlatformConfig.service_account, default kubetrain-runtime).
RUNTIME_RULES: list[dict[str, Any]] = [
    {"apiGroups": [GROUP], "resources": [f"{PLURAL}/status"], "verbs": ["patch"]},
]
RUNTIME_ROLE = "kubetrain-runtime"

# What the REST API (`kubetrain api`, chart value api.enabled) does with its own service account: check callers
# (TokenReview, SubjectAccessReview), then act on TrainingJobs for them, and read a job's submitter pod log.
API_RULES: list[dict[str, Any]] = [
    {"apiGroups": [GROUP], "resources": [PLURAL], "verbs": ["get", "list", "create", "patch", "delete"]},
    {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
    {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"], "verbs": ["create"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
]


def rbac() -> list[dict[str, Any]]:
    meta = {"name": NAME, "labels": dict(LABELS)}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {**meta, "namespace": NAMESPACE}},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": meta,
            "rules": RULES,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": meta,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": NAME},
            "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": NAMESPACE}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": RUNTIME_ROLE, "labels": dict(LABELS)},
            "rules": RUNTIME_RULES,
        },
    ]


def deployment(image: str = DEFAULT_IMAGE) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": NAME, "namespace": NAMESPACE, "labels": dict(LABELS)},
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": {"app.kubernetes.io/name": NAME}},
            "template": {
                "metadata": {"labels": dict(LABELS)},
                "spec": {
                    "serviceAccountName": NAME,
                    "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [
                        {
                            "name": "operator",
                            "image": image,
                            "command": ["kubetrain", "operator"],
                            "args": ["--metrics-port", str(METRICS_PORT), "--health-port", str(HEALTH_PORT)],
                            "ports": [
                                {"name": "metrics", "containerPort": METRICS_PORT},
                                {"name": "health", "containerPort": HEALTH_PORT},
                            ],
                            "livenessProbe": {
                                "httpGet": {"path": "/healthz", "port": "health"},
                                "initialDelaySeconds": 10,
                                "periodSeconds": 30,
                            },
                            "resources": {
                                "requests": {"cpu": "100m", "memory": "128Mi"},
                                "limits": {"memory": "512Mi"},
                            },
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": True,
                                "capabilities": {"drop": ["ALL"]},
                            },
                        }
                    ],
                },
            },
        },
    }


def metrics_service() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": NAME, "namespace": NAMESPACE, "labels": dict(LABELS)},
        "spec": {
            "selector": {"app.kubernetes.io/name": NAME},
            "ports": [{"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics"}],
        },
    }
