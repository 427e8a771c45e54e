"""A Python port of the KubeRay controller's RayJob validation, so tests reject what a real KubeRay rejects.

KubeRay's CRD schema is not its whole contract: before it creates anything, the RayJob controller runs
`validateRayJob` (ray-operator/controllers/ray/rayjob_controller.go) over the object, and a RayJob that fails
ends as `jobDeploymentStatus: ValidationFailed` with nothing started. This module ports those checks from
ray-project/kuberay tag v1.7.0 (commit 9c13e713c17859f5c2d13bec324c9548b808c8f2),
ray-operator/controllers/ray/utils/validation.go: ValidateRayJobMetadata, ValidateRayJobSpec (with
validateDeletionConfiguration, validateDeletionRules, validateLegacyDeletionPolicies) and ValidateRayClusterSpec,
and ValidateRayJobStatus. Messages are KubeRay's, word for word; each check names its Go function.

Left out (a kubetrain RayJob never sets these fields, and the port says so instead of guessing):
GCS fault-tolerance backends (validateGcsFaultToleranceBackend), network policy and TLS options, the history
server collector, auth options other than the K8s token auth refusal, RayService and RayCronJob rules.
"""

from __future__ import annotations

import re
from typing import Any

KUBERAY_VERSION = "v1.7.0"
KUBERAY_COMMIT = "9c13e713c17859f5c2d13bec324c9548b808c8f2"
MAX_RAYCLUSTER_NAME = 53  # utils/constant.go MaxRayClusterNameLength
MAX_RAYJOB_NAME = MAX_RAYCLUSTER_NAME - 6  # MaxRayJobNameLength
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS1035_MAX = 63
# pkg/features/features.go at v1.7.0: the gates a RayJob check consults, with their defaults.
DEFAULT_GATES = {"RayJobDeletionPolicy": True}
RAY_ENABLE_AUTOSCALER_V2 = "RAY_enable_autoscaler_v2"
RAY_REDIS_ADDRESS, REDIS_PASSWORD, REDIS_USERNAME = "RAY_REDIS_ADDRESS", "REDIS_PASSWORD", "REDIS_USERNAME"
FT_ANNOTATION = "ray.io/ft-enabled"
CLUSTER_SELECTOR_KEY = "ray.io/cluster"


class Invalid(Exception):
    """One KubeRay validation error (its message is what KubeRay writes into status.message)."""


def validate_rayjob(rayjob: dict[str, Any], gates: dict[str, bool] | None = None) -> str | None:
    """None when KubeRay v1.7.0 would accept the RayJob, else its error message (validateRayJob's order)."""
    gates = {**DEFAULT_GATES, **(gates or {})}
    try:
        validate_metadata(rayjob.get("metadata") or {})
        validate_spec(rayjob, gates)
        validate_status(rayjob)
    except Invalid as e:
        return str(e)
    return None


def dns1035_errors(name: str) -> list[str]:
    """k8s.io/apimachinery IsDNS1035Label."""
    errs = []
    if len(name) > DNS1035_MAX:
        errs.append(f"must be no more than {DNS1035_MAX} characters")
    if not DNS1035.match(name):
        errs.append(
            "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an "
            "alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', "
            "regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"
        )
    return errs


def validate_metadata(meta: dict[str, Any]) -> None:
    """ValidateRayJobMetadata."""
    name = meta.get("name") or ""
    if len(name) > MAX_RAYJOB_NAME:
        raise Invalid(
            f"The RayJob metadata is invalid: RayJob name should be no more than {MAX_RAYJOB_NAME} characters"
        )
    errs = dns1035_errors(name)
    if errs:
        raise Invalid(
            f"The RayJob metadata is invalid: RayJob name should be a valid DNS1035 label: [{' '.join(errs)}]"
        )


def validate_status(rayjob: dict[str, Any]) -> None:
    """ValidateRayJobStatus."""
    status, spec = rayjob.get("status") or {}, rayjob.get("spec") or {}
    if status.get("jobDeploymentStatus") == "Waiting" and spec.get("submissionMode") != "InteractiveMode":
        raise Invalid(
            "The RayJob status is invalid: JobDeploymentStatus cannot be `Waiting` when SubmissionMode is "
            "not InteractiveMode"
        )


def validate_spec(rayjob: dict[str, Any], gates: dict[str, bool]) -> None:
    """ValidateRayJobSpec."""
    spec = rayjob.get("spec") or {}
    suspend, shutdown = bool(spec.get("suspend")), bool(spec.get("shutdownAfterJobFinishes"))
    if suspend and not shutdown:
        raise Invalid(
            "The RayJob spec is invalid: a RayJob with shutdownAfterJobFinishes set to false is not allowed "
            "to be suspended"
        )
    if (spec.get("ttlSecondsAfterFinished") or 0) < 0:
        raise Invalid("The RayJob spec is invalid: TTLSecondsAfterFinished must be a non-negative integer")
    _deletion_configuration(spec, gates)
    selector = spec.get("clusterSelector") or {}
    mode = spec.get("submissionMode") or "K8sJobMode"
    backoff = spec.get("backoffLimit")
    if suspend and selector:
        raise Invalid(
            "The RayJob spec is invalid: the ClusterSelector mode doesn't support the suspend operation"
        )
    if spec.get("rayClusterSpec") is None and not selector:
        raise Invalid("The RayJob spec is invalid: one of RayClusterSpec or ClusterSelector must be set")
    if selector:
        if not selector.get(CLUSTER_SELECTOR_KEY):
            raise Invalid("cluster name in ClusterSelector should not be empty")
        if mode == "SidecarMode":
            raise Invalid("ClusterSelector is not supported in SidecarMode")
        if backoff is not None and backoff > 0:
            raise Invalid(
                "The RayJob spec is invalid: BackoffLimit is incompatible with ClusterSelector mode"
            )
    if mode == "InteractiveMode" and backoff is not None and backoff > 0:
        raise Invalid("The RayJob spec is invalid: BackoffLimit is incompatible with InteractiveMode")
    if mode == "SidecarMode":
        if spec.get("submitterPodTemplate") is not None:
            raise Invalid("Currently, SidecarMode doesn't support SubmitterPodTemplate")
        if spec.get("submitterConfig") is not None:
            raise Invalid("Currently, SidecarMode doesn't support SubmitterConfig")
        policy = _pod_spec(spec["rayClusterSpec"]["headGroupSpec"]).get("restartPolicy") or ""
        if policy not in ("", "Never"):
            raise Invalid("restartPolicy for head Pod should be Never or unset when using SidecarMode")
    cluster = spec.get("rayClusterSpec")
    if cluster is not None:
        if (cluster.get("authOptions") or {}).get("enableK8sTokenAuth"):
            raise Invalid(
                "The RayJob spec is invalid: K8s token auth mode is currently not supported for RayJob"
            )
        try:
            validate_cluster_spec(cluster, (rayjob.get("metadata") or {}).get("annotations") or {}, gates)
        except Invalid as e:
            raise Invalid(f"The RayJob spec is invalid: {e}") from None
    deadline = spec.get("activeDeadlineSeconds")
    if deadline is not None and deadline <= 0:
        raise Invalid("The RayJob spec is invalid: activeDeadlineSeconds must be a positive integer")
    pre_running = spec.get("preRunningDeadlineSeconds")
    if pre_running is not None and pre_running <= 0:
        raise Invalid("The RayJob spec is invalid: preRunningDeadlineSeconds must be a positive integer")
    if backoff is not None and backoff < 0:
        raise Invalid("The RayJob spec is invalid: backoffLimit must be a positive integer")


def _deletion_configuration(spec: dict[str, Any], gates: dict[str, bool]) -> None:
    """validateDeletionConfiguration (+ validateDeletionRules, validateLegacyDeletionPolicies)."""
    shutdown = bool(spec.get("shutdownAfterJobFinishes"))
    if not shutdown and (spec.get("ttlSecondsAfterFinished") or 0) > 0:
        raise Invalid(
            "The RayJob spec is invalid: a RayJob with shutdownAfterJobFinishes set to false cannot have "
            "TTLSecondsAfterFinished"
        )
    strategy = spec.get("deletionStrategy")
    if strategy is None:
        return
    if not gates.get("RayJobDeletionPolicy"):
        raise Invalid("RayJobDeletionPolicy feature gate must be enabled to use DeletionStrategy")
    legacy = strategy.get("onSuccess") is not None or strategy.get("onFailure") is not None
    rules = strategy.get("deletionRules") or []
    if rules and shutdown:
        raise Invalid(
            "The RayJob spec is invalid: spec.shutdownAfterJobFinishes and spec.deletionStrategy.deletionRules "
            "are mutually exclusive"
        )
    if rules and legacy:
        raise Invalid(
            "The RayJob spec is invalid: Cannot use both legacy onSuccess/onFailure fields and deletionRules "
            "simultaneously"
        )
    if legacy:
        _legacy_deletion(spec, strategy)
    elif rules:
        _deletion_rules(spec, rules)
    else:
        raise Invalid(
            "The RayJob spec is invalid: DeletionStrategy requires either BOTH onSuccess and onFailure, OR the "
            "deletionRules field (cannot be empty)"
        )


def _deletion_rules(spec: dict[str, Any], rules: list[dict[str, Any]]) -> None:
    """validateDeletionRules: per-rule checks, uniqueness, then Workers <= Cluster <= Self TTLs (errors joined)."""
    selector = bool(spec.get("clusterSelector"))
    autoscaling = _autoscaling(spec.get("rayClusterSpec"))
    grouped: dict[tuple[str, str], dict[str, int]] = {}
    errs: list[str] = []
    for i, rule in enumerate(rules):
        cond, policy = rule.get("condition") or {}, rule.get("policy")
        has_job, has_deploy = cond.get("jobStatus") is not None, cond.get("jobDeploymentStatus") is not None
        if has_job and has_deploy:
            errs.append(
                f"deletionRules[{i}]: cannot set both JobStatus and JobDeploymentStatus at the same time"
            )
            continue
        if not has_job and not has_deploy:
            errs.append(f"deletionRules[{i}]: exactly one of JobStatus and JobDeploymentStatus must be set")
            continue
        if (cond.get("ttlSeconds") or 0) < 0:
            errs.append(f"deletionRules[{i}]: TTLSeconds must be non-negative")
            continue
        if selector and policy in ("DeleteCluster", "DeleteWorkers"):
            errs.append(
                f"deletionRules[{i}]: DeletionPolicyType '{policy}' not supported when ClusterSelector is set"
            )
            continue
        if autoscaling and policy == "DeleteWorkers":
            errs.append(
                f"deletionRules[{i}]: DeletionPolicyType 'DeleteWorkers' not supported with autoscaling enabled"
            )
            continue
        key = (
            ("JobStatus", cond["jobStatus"])
            if has_job
            else ("JobDeploymentStatus", cond["jobDeploymentStatus"])
        )
        group = grouped.setdefault(key, {})
        if policy in group:
            errs.append(
                f"deletionRules[{i}]: duplicate rule for DeletionPolicyType '{policy}' and {key[0]} '{key[1]}'"
            )
            continue
        group[policy] = cond.get("ttlSeconds") or 0
    for (kind, value), ttls in grouped.items():
        previous: tuple[str, int] | None = None
        for policy in ("DeleteWorkers", "DeleteCluster", "DeleteSelf"):
            if policy not in ttls:
                continue
            if previous and ttls[policy] < previous[1]:
                errs.append(
                    f"for {kind} '{value}': {policy} TTL ({ttls[policy]}) must be >= {previous[0]} TTL ({previous[1]})"
                )
            previous = (policy, ttls[policy])
    if errs:
        raise Invalid("\n".join(errs))  # errors.Join


def _legacy_deletion(spec: dict[str, Any], strategy: dict[str, Any]) -> None:
    """validateLegacyDeletionPolicies."""
    on_success, on_failure = strategy.get("onSuccess"), strategy.get("onFailure")
    if on_success is None or on_failure is None:
        raise Invalid(
            "both DeletionStrategy.OnSuccess and DeletionStrategy.OnFailure must be set when using the legacy "
            "deletion policy fields of DeletionStrategy"
        )
    success, failure = on_success.get("policy"), on_failure.get("policy")
    if success is None:
        raise Invalid(
            "the DeletionPolicyType field of DeletionStrategy.OnSuccess cannot be unset when DeletionStrategy is enabled"
        )
    if failure is None:
        raise Invalid(
            "the DeletionPolicyType field of DeletionStrategy.OnFailure cannot be unset when DeletionStrategy is enabled"
        )
    if spec.get("clusterSelector"):
        if success in ("DeleteCluster", "DeleteWorkers"):
            raise Invalid(f"the ClusterSelector mode doesn't support DeletionStrategy={success} on success")
        if failure in ("DeleteCluster", "DeleteWorkers"):
            raise Invalid(f"the ClusterSelector mode doesn't support DeletionStrategy={failure} on failure")
    if "DeleteWorkers" in (success, failure) and _autoscaling(spec.get("rayClusterSpec")):
        raise Invalid(
            "DeletionStrategy=DeleteWorkers currently does not support RayCluster with autoscaling enabled"
        )
    if spec.get("shutdownAfterJobFinishes") and "DeleteNone" in (success, failure):
        raise Invalid(
            "The RayJob spec is invalid: shutdownAfterJobFinshes is set to 'true' while deletion policy is "
            "'DeleteNone'"
        )


def validate_cluster_spec(
    cluster: dict[str, Any], annotations: dict[str, str], gates: dict[str, bool]
) -> None:
    """ValidateRayClusterSpec (the parts a RayJob's cluster can reach; see the module docstring)."""
    head = cluster.get("headGroupSpec") or {}
    if not _pod_spec(head).get("containers"):
        raise Invalid("headGroupSpec should have at least one container")
    _group_resources("Head", head)
    _group_labels("Head", head)
    autoscaling = _autoscaling(cluster)
    for group in cluster.get("workerGroupSpecs") or []:
        name = group.get("groupName", "")
        if not _pod_spec(group).get("containers"):
            raise Invalid("workerGroupSpec should have at least one container")
        low, high = group.get("minReplicas"), group.get("maxReplicas")
        if not autoscaling and (low is None or high is None):
            raise Invalid(
                f"worker group {name} must set both minReplicas and maxReplicas when autoscaling is disabled"
            )
        if low is not None and low < 0:
            raise Invalid(f"worker group {name} has negative minReplicas {low}")
        if high is not None and high < 0:
            raise Invalid(f"worker group {name} has negative maxReplicas {high}")
        if low is not None and high is not None and low > high:
            raise Invalid(f"worker group {name} has minReplicas {low} greater than maxReplicas {high}")
        _group_resources(name, group)
        _group_labels(name, group)
        _idle_timeout(name, group, cluster)
    head_env = _env(_pod_spec(head)["containers"][0])
    ft_options = cluster.get("gcsFaultToleranceOptions")
    if annotations.get(FT_ANNOTATION) and ft_options is not None:
        raise Invalid(
            f"{FT_ANNOTATION} annotation and GcsFaultToleranceOptions are both set. "
            "Please use only GcsFaultToleranceOptions to configure GCS fault tolerance"
        )
    ft_enabled = ft_options is not None or annotations.get(FT_ANNOTATION) == "true"
    if not ft_enabled and RAY_REDIS_ADDRESS in head_env:
        raise Invalid(
            f"{RAY_REDIS_ADDRESS} is set which implicitly enables GCS fault tolerance, but GcsFaultToleranceOptions "
            "is not set. Please set GcsFaultToleranceOptions to enable GCS fault tolerance"
        )
    if (head.get("rayStartParams") or {}).get("redis-username") or REDIS_USERNAME in head_env:
        raise Invalid(
            "cannot set redis username in rayStartParams or environment variables - use "
            "GcsFaultToleranceOptions.RedisUsername instead"
        )
    suspended = [g.get("groupName", "") for g in cluster.get("workerGroupSpecs") or [] if g.get("suspend")]
    if suspended and not gates.get("RayJobDeletionPolicy"):
        raise Invalid(
            f"worker group {suspended[0]} can be suspended only when the RayJobDeletionPolicy feature gate is enabled"
        )
    v2_env = head_env.get(RAY_ENABLE_AUTOSCALER_V2)
    if not autoscaling and v2_env in ("1", "true"):
        raise Invalid(
            f"environment variable {RAY_ENABLE_AUTOSCALER_V2} cannot be set to '{v2_env}' when "
            "enableInTreeAutoscaling is false. Please set enableInTreeAutoscaling: true to use autoscaler v2"
        )
    if autoscaling and suspended:
        raise Invalid(f"worker group {suspended[0]} cannot be suspended with Autoscaler enabled")


def _group_resources(name: str, group: dict[str, Any]) -> None:
    """validateRayGroupResources: Ray resources in rayStartParams or in the group's resources field, not both."""
    params = group.get("rayStartParams") or {}
    in_params = any(params.get(k) for k in ("num-cpus", "num-gpus", "memory", "resources"))
    if in_params and group.get("resources"):
        raise Invalid(
            f"resource fields should not be set in both rayStartParams and Resources for {name} group; "
            "please use only one"
        )


LABEL_KEY = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def _group_labels(name: str, group: dict[str, Any]) -> None:
    """validateRayGroupLabels (label syntax checked loosely: name part and value, 63 characters each)."""
    if "labels" in (group.get("rayStartParams") or {}):
        raise Invalid(
            f"rayStartParams['labels'] is not supported for {name} group; please use the top-level Labels field instead"
        )
    for key, value in (group.get("labels") or {}).items():
        short = key.rsplit("/", 1)[-1]
        if len(short) > 63 or not LABEL_KEY.match(short):
            raise Invalid(f"invalid label key for {name} group: '{key}'")
        if len(value) > 63 or not LABEL_VALUE.match(value):
            raise Invalid(f"invalid label value for key '{key}' in {name} group: '{value}'")


def _idle_timeout(name: str, group: dict[str, Any], cluster: dict[str, Any]) -> None:
    """validateWorkerGroupIdleTimeout."""
    seconds = group.get("idleTimeoutSeconds")
    if seconds is None:
        return
    if seconds < 0:
        raise Invalid(f"worker group {name}: idleTimeoutSeconds must be non-negative, got {seconds}")
    v2 = (cluster.get("autoscalerOptions") or {}).get("version") == "v2"
    head_env = _env(_pod_spec(cluster["headGroupSpec"])["containers"][0])
    if not v2 and head_env.get(RAY_ENABLE_AUTOSCALER_V2) not in ("1", "true"):
        raise Invalid(
            f"worker group {name}: idleTimeoutSeconds is set, but autoscaler v2 is not enabled. Please set "
            f".spec.autoscalerOptions.version to 'v2' (or set {RAY_ENABLE_AUTOSCALER_V2} environment variable "
            "to 'true' in the head pod if using KubeRay < 1.4.0)"
        )


def _autoscaling(cluster: dict[str, Any] | None) -> bool:
    """IsAutoscalingEnabled."""
    return bool(cluster and cluster.get("enableInTreeAutoscaling"))


def _pod_spec(group: dict[str, Any]) -> dict[str, Any]:
    return (group.get("template") or {}).get("spec") or {}


def _env(container: dict[str, Any]) -> dict[str, str | None]:
    return {e["name"]: e.get("value") for e in container.get("env") or []}
