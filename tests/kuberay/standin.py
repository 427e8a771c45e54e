"""A KubeRay stand-in for tests: KubeRay v1.7.0's RayJob controller, running RayJobs for real on this machine.

It watches RayJobs in a Kubernetes API (the test emulator, over HTTP) and walks each through the state machine of
ray-operator/controllers/ray/rayjob_controller.go at tag v1.7.0 (`Reconcile`), writing RayJob status with KubeRay's
field names, values and messages:
- validation first (`validateRayJob`, ported in tests/kuberay/validation.py): a rejected RayJob gets
  jobDeploymentStatus ValidationFailed, reason ValidationFailed and KubeRay's message, and nothing starts;
- New -> Initializing (`initRayJobStatusIfNeed`: jobId and rayClusterName `<rayjob>-<5 random>`, startTime) ->
  a RayCluster object owned by the RayJob (labels as `constructRayClusterForRayJob`), whose pods become Ray nodes
  (tests/kuberay/localray.py); once they run, dashboardURL `<cluster>-head-svc.<ns>.svc.cluster.local:8265` and the
  submission -> Running -> Complete / Failed from the driver's Ray job status (jobStatus, message, rayJobInfo
  start/end times, reason AppFailed), endTime, `failed` / `succeeded` counts;
- suspend (`updateStatusToSuspendingIfNeeded` from Initializing or Running -> Suspending -> cluster deleted ->
  Suspended; unsuspended -> New), backoffLimit (`checkBackoffLimitAndUpdateStatusIfNeeded`: Failed -> Retrying ->
  cluster deleted, ids reset -> New, so every retry is a NEW cluster and a new submission), activeDeadlineSeconds
  (Failed, DeadlineExceeded; no retry), shutdownAfterJobFinishes with ttlSecondsAfterFinished (the RayCluster object
  is deleted that long after endTime: `handleShutdownAfterJobFinishes`);
- deletion: when a RayCluster object is gone (deleted, or garbage-collected with its RayJob) its Ray processes and
  drivers stop, as its pods would.

Left out, and why: the submitter Kubernetes Job and the head Service objects (the emulator serves neither kind;
the driver is started directly, as `ray job submit` would have it started, and its exit is the submitter's
exit), the finalizer (the emulator deletes at once; deletion stops the driver with its cluster),
deletionStrategy (kubetrain renders none; KubeRay rejects it beside shutdownAfterJobFinishes), clusterSelector,
SidecarMode / HTTPMode specifics (both submit like K8sJobMode here), preRunningDeadlineSeconds, the
job-status-check and transition grace-period timeouts, batch schedulers, metrics and Events. KubeRay requeues every
3 s; the stand-in reconciles on every watch event and every `resync` seconds (default 0.5 s) so tests run quicker.
"""

from __future__ import annotations

import copy
import datetime
import logging
import pathlib
import random
import threading
import traceback
from typing import Any

import httpx

from .localray import LocalRayCluster, Materialiser
from .validation import validate_rayjob

log = logging.getLogger(__name__)

RJ, RC = ("ray.io/v1", "rayjobs"), ("ray.io/v1", "rayclusters")
MERGE = {"Content-Type": "application/merge-patch+json"}
RAND = (
    "bcdfghjklmnpqrstvwxz2456789"  # k8s.io/apimachinery/pkg/util/rand: what GenerateRayClusterName draws from
)
TERMINAL_JOB = ("STOPPED", "SUCCEEDED", "FAILED")  # rayv1.IsJobTerminal
TERMINAL_DEPLOYMENT = ("Complete", "Failed")  # rayv1.IsJobDeploymentTerminal
NO_RETRY = ("DeadlineExceeded", "JobStatusCheckTimeoutExceeded")
MANAGER = "ray.io/kuberay-operator"


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)


def stamp(t: datetime.datetime) -> str:
    """metav1.Time as JSON (RFC 3339, seconds)."""
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse(text: str) -> datetime.datetime:
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)


def go_time(text: str) -> str:
    """How Go's %v prints a metav1.Time (the activeDeadlineSeconds message)."""
    return parse(text).strftime("%Y-%m-%d %H:%M:%S +0000 UTC")


def generate_name(base: str) -> str:
    """utils.GenerateRayClusterName / GenerateRayJobId: `<base>-<5 random characters>`."""
    return f"{base}-{''.join(random.choice(RAND) for _ in range(5))}"


class KubeRayStandIn:
    """The controller loop: list + watch RayJobs and RayClusters, reconcile each RayJob, run its Ray cluster."""

    def __init__(
        self, url: str, workdir: pathlib.Path, namespaces: list[str] | None = None, resync: float = 0.5
    ):
        self.url, self.workdir, self.namespaces, self.resync = url, pathlib.Path(workdir), namespaces, resync
        self.http = httpx.Client(base_url=url, timeout=30)
        # What every pod gets from its surroundings here: the API address the runtime's status reporter uses.
        self.pods = Materialiser(self._get, self.workdir / "claims", {"KUBETRAIN_KUBE_URL": url})
        self.clusters: dict[tuple[str, str], LocalRayCluster] = {}
        self.errors: list[str] = []  # reconcile failures (a test fixture asserts there are none)
        self._stop, self._wake = threading.Event(), threading.Event()
        self._threads: list[threading.Thread] = []
        self._stopping: list[threading.Thread] = []

    # -- life cycle -----------------------------------------------------------------------------------------

    def start(self) -> KubeRayStandIn:
        self._threads = [threading.Thread(target=self._loop, name="kuberay-standin", daemon=True)]
        self._threads += [threading.Thread(target=self._watch, args=(res,), daemon=True) for res in (RJ, RC)]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._threads[0].join(timeout=60)
        for key in list(self.clusters):
            self._release(key)
        for thread in self._stopping:
            thread.join(timeout=60)
        self.http.close()

    def cluster(self, namespace: str, name: str) -> LocalRayCluster | None:
        """The Ray processes behind a RayCluster object, while they run."""
        return self.clusters.get((namespace, name))

    # -- the loop -------------------------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self.reconcile_all()
            except Exception:
                self.errors.append(traceback.format_exc())
                log.exception("KubeRay stand-in: reconcile failed")
            self._wake.wait(self.resync)

    def _watch(self, resource: tuple[str, str]) -> None:
        """Wake the loop on every change (controller-runtime's watch); reconnect when the stream ends."""
        while not self._stop.is_set():
            try:
                params = {"watch": "true", "timeoutSeconds": "10"}
                with self.http.stream(
                    "GET", f"/apis/{resource[0]}/{resource[1]}", params=params, timeout=30
                ) as r:
                    for _ in r.iter_lines():
                        self._wake.set()
                        if self._stop.is_set():
                            return
            except httpx.HTTPError:
                self._stop.wait(0.5)

    def reconcile_all(self) -> None:
        objects = {(o["metadata"]["namespace"], o["metadata"]["name"]): o for o in self._list(RC)}
        for key in list(self.clusters):
            if key not in objects:  # the RayCluster object is gone: so are its pods
                self._release(key)
        for key, local in list(self.clusters.items()):
            self._publish_cluster_status(objects[key], local)
        for rayjob in self._list(RJ):
            self.reconcile(rayjob)

    # -- one RayJob (rayjob_controller.go Reconcile) ---------------------------------------------------------

    def reconcile(self, rayjob: dict[str, Any]) -> None:
        spec = rayjob.get("spec") or {}
        if spec.get("managedBy") not in (None, MANAGER):  # utils.ManagedByExternalController
            return
        old = rayjob.get("status") or {}
        status = copy.deepcopy(old)
        error = validate_rayjob(rayjob)
        if error is not None:
            status.update(jobDeploymentStatus="ValidationFailed", reason="ValidationFailed", message=error)
            self._update_status(rayjob, old, status)
            return
        deployment = status.get("jobDeploymentStatus") or ""
        if deployment == "":
            self._init_status(rayjob, status)
        elif deployment == "Initializing":
            self._initializing(rayjob, status)
        elif deployment == "Waiting":
            if not spec.get("jobId"):
                return
            status.update(jobId=spec["jobId"], jobDeploymentStatus="Running")
        elif deployment == "Running":
            self._running(rayjob, status)
        elif deployment in ("Suspending", "Retrying"):
            if not self._delete_cluster(rayjob, status):
                return  # wait for the resources to go before the status moves on
            for key in ("rayClusterStatus", "rayClusterName", "dashboardURL", "jobId", "message", "reason",
                        "rayJobInfo", "jobStatusCheckFailureStartTime", "jobStatus"):  # fmt: skip
                status.pop(key, None)
            status["jobDeploymentStatus"] = "Suspended" if deployment == "Suspending" else ""
        elif deployment == "Suspended":
            if spec.get("suspend"):
                return
            status.pop("jobStatus", None)
            status["jobDeploymentStatus"] = ""
        elif deployment in TERMINAL_DEPLOYMENT:
            self._finished(rayjob, status)
            return
        else:
            return
        self._check_backoff_limit(spec, status)
        self._update_status(rayjob, old, status)

    def _init_status(self, rayjob: dict[str, Any], status: dict[str, Any]) -> None:
        """initRayJobStatusIfNeed: ids chosen before anything is created, so nothing is created twice."""
        spec, name = rayjob.get("spec") or {}, rayjob["metadata"]["name"]
        if spec.get("submissionMode", "K8sJobMode") != "InteractiveMode" and not status.get("jobId"):
            status["jobId"] = spec.get("jobId") or generate_name(name)
        if not status.get("rayClusterName"):
            status["rayClusterName"] = generate_name(name)
        status["jobDeploymentStatus"] = "Initializing"
        status["startTime"] = stamp(now())

    def _initializing(self, rayjob: dict[str, Any], status: dict[str, Any]) -> None:
        spec = rayjob.get("spec") or {}
        if self._suspending(spec, status) or self._deadline(spec, status):
            return
        obj, local = self._get_or_create_cluster(rayjob, status)
        if not status.get("dashboardURL"):
            if not local.ready.is_set():  # wait for the RayCluster to be ready before submitting
                status["rayClusterStatus"] = _cluster_status(obj, local)
                return
            ns = rayjob["metadata"]["namespace"]
            status["dashboardURL"] = f"{obj['metadata']['name']}-head-svc.{ns}.svc.cluster.local:8265"
        if spec.get("submissionMode") == "InteractiveMode":
            status["jobDeploymentStatus"] = "Waiting"
            return
        local.submit(status["jobId"], spec.get("entrypoint") or "")
        status["jobDeploymentStatus"] = "Running"

    def _running(self, rayjob: dict[str, Any], status: dict[str, Any]) -> None:
        spec = rayjob.get("spec") or {}
        if self._suspending(spec, status) or self._deadline(spec, status):
            return
        obj, local = self._get_or_create_cluster(rayjob, status)
        driver = local.drivers.get(status.get("jobId") or "")
        if (
            driver is None
        ):  # the Ray job is not in this cluster (its head was replaced) and the submitter ended
            status.update(jobDeploymentStatus="Failed", reason="AppFailed",
                          message="Submitter completed but Ray job not found in RayCluster.")  # fmt: skip
            return
        info = driver.poll()
        deployment, reason = "Running", ""
        if info.status in TERMINAL_JOB:
            deployment, reason = ("Failed", "AppFailed") if info.status == "FAILED" else ("Complete", "")
        status.update(rayClusterStatus=_cluster_status(obj, local), jobStatus=info.status,
                      jobDeploymentStatus=deployment, reason=reason, message=info.message)  # fmt: skip
        job_info = {}
        if info.start_time:
            job_info["startTime"] = stamp(_from_ms(info.start_time))
        if info.end_time:
            job_info["endTime"] = stamp(_from_ms(info.end_time))
        status["rayJobInfo"] = job_info

    def _finished(self, rayjob: dict[str, Any], status: dict[str, Any]) -> None:
        """Complete / Failed: handleShutdownAfterJobFinishes (the RayCluster goes ttlSecondsAfterFinished after endTime)."""
        spec = rayjob.get("spec") or {}
        if (
            spec.get("clusterSelector")
            or not spec.get("shutdownAfterJobFinishes")
            or not status.get("endTime")
        ):
            return
        due = parse(status["endTime"]) + datetime.timedelta(
            seconds=int(spec.get("ttlSecondsAfterFinished") or 0)
        )
        if due <= now():
            self._delete_cluster(rayjob, status)

    @staticmethod
    def _suspending(spec: dict[str, Any], status: dict[str, Any]) -> bool:
        """updateStatusToSuspendingIfNeeded: only Running and Initializing may move to Suspending."""
        if not spec.get("suspend") or status.get("jobDeploymentStatus") not in ("Running", "Initializing"):
            return False
        status["jobDeploymentStatus"] = "Suspending"
        return True

    @staticmethod
    def _deadline(spec: dict[str, Any], status: dict[str, Any]) -> bool:
        """checkActiveDeadlineAndUpdateStatusIfNeeded."""
        seconds = spec.get("activeDeadlineSeconds")
        if seconds is None or now() < parse(status["startTime"]) + datetime.timedelta(seconds=int(seconds)):
            return False
        status.update(jobDeploymentStatus="Failed", reason="DeadlineExceeded",
                      message=f"The RayJob has passed the activeDeadlineSeconds. StartTime: {go_time(status['startTime'])}. "
                      f"ActiveDeadlineSeconds: {seconds}")  # fmt: skip
        return True

    @staticmethod
    def _check_backoff_limit(spec: dict[str, Any], status: dict[str, Any]) -> None:
        """checkBackoffLimitAndUpdateStatusIfNeeded: count the outcome; a failure with retries left -> Retrying."""
        failed, succeeded = int(status.get("failed") or 0), int(status.get("succeeded") or 0)
        deployment = status.get("jobDeploymentStatus")
        failed += deployment == "Failed"
        succeeded += status.get("jobStatus") == "SUCCEEDED" and deployment == "Complete"
        status["failed"], status["succeeded"] = failed, succeeded
        limit = spec.get("backoffLimit")
        if deployment == "Failed" and limit is not None and failed < int(limit) + 1:
            if status.get("reason") not in NO_RETRY:
                status["jobDeploymentStatus"] = "Retrying"

    def _update_status(self, rayjob: dict[str, Any], old: dict[str, Any], new: dict[str, Any]) -> None:
        """updateRayJobStatus: written only when jobStatus, jobDeploymentStatus or the cluster status changed."""
        new = {k: v for k, v in new.items() if v not in ("", None, {})}  # omitempty
        changed = any(old.get(k) != new.get(k) for k in ("jobStatus", "jobDeploymentStatus")) or _comparable(
            old.get("rayClusterStatus")
        ) != _comparable(new.get("rayClusterStatus"))
        if not changed:
            return
        if new.get("jobDeploymentStatus") in TERMINAL_DEPLOYMENT:
            new["endTime"] = stamp(now())
        patch = {k: None for k in old if k not in new} | new
        meta = rayjob["metadata"]
        self._patch(RJ, meta["namespace"], meta["name"], {"status": patch}, "status")

    # -- the RayCluster -------------------------------------------------------------------------------------

    def _get_or_create_cluster(
        self, rayjob: dict[str, Any], status: dict[str, Any]
    ) -> tuple[dict, LocalRayCluster]:
        """getOrCreateRayClusterInstance, and the pods of a new RayCluster started as Ray nodes."""
        ns, name = rayjob["metadata"]["namespace"], status["rayClusterName"]
        obj = self._get(f"/apis/ray.io/v1/namespaces/{ns}/rayclusters/{name}")
        if obj is None:
            obj = self._create_cluster_object(rayjob, name)
        local = self.clusters.get((ns, name))
        if local is None:
            root = self.workdir / ns / name
            local = self.clusters[(ns, name)] = LocalRayCluster(
                ns, name, obj["spec"], self.pods, root
            ).start()
        return obj, local

    def _create_cluster_object(self, rayjob: dict[str, Any], name: str) -> dict[str, Any]:
        """constructRayClusterForRayJob: the RayJob's labels plus KubeRay's, owned (controller) by the RayJob."""
        meta, spec = rayjob["metadata"], rayjob["spec"]
        labels = {**(meta.get("labels") or {}), "ray.io/originated-from-cr-name": meta["name"],
                  "ray.io/originated-from-crd": "RayJob",
                  "ray.io/job-submission-mode": spec.get("submissionMode", "K8sJobMode")}  # fmt: skip
        owner = {"apiVersion": "ray.io/v1", "kind": "RayJob", "name": meta["name"], "uid": meta["uid"],
                 "controller": True, "blockOwnerDeletion": True}  # fmt: skip
        body = {"apiVersion": "ray.io/v1", "kind": "RayCluster",
                "metadata": {"name": name, "namespace": meta["namespace"], "labels": labels,
                             "annotations": dict(meta.get("annotations") or {}), "ownerReferences": [owner]},
                "spec": copy.deepcopy(spec["rayClusterSpec"])}  # fmt: skip
        r = self.http.post(f"/apis/ray.io/v1/namespaces/{meta['namespace']}/rayclusters", json=body)
        if r.status_code == 409:
            return self._get(f"/apis/ray.io/v1/namespaces/{meta['namespace']}/rayclusters/{name}") or body
        r.raise_for_status()
        return r.json()

    def _delete_cluster(self, rayjob: dict[str, Any], status: dict[str, Any]) -> bool:
        """deleteClusterResources: True once the RayCluster is gone (a missing one counts as deleted)."""
        ns, name = rayjob["metadata"]["namespace"], status.get("rayClusterName")
        if not name:
            return True
        gone = self.http.delete(f"/apis/ray.io/v1/namespaces/{ns}/rayclusters/{name}").status_code == 404
        self._release((ns, name))
        return gone

    def _publish_cluster_status(self, obj: dict[str, Any], local: LocalRayCluster) -> None:
        """What KubeRay's RayCluster controller writes once the pods run (state ready), or why they do not."""
        wanted = _cluster_status(obj, local)
        if _comparable(obj.get("status")) != _comparable(wanted):
            meta = obj["metadata"]
            self._patch(RC, meta["namespace"], meta["name"], {"status": wanted}, "status")
        if local.error and local.error not in " ".join(self.errors):
            self.errors.append(f"RayCluster {obj['metadata']['name']}: {local.error}")

    def _release(self, key: tuple[str, str]) -> None:
        """Stop a cluster's processes in the background (its pods are being deleted)."""
        local = self.clusters.pop(key, None)
        if local is not None:
            thread = threading.Thread(target=local.stop, name=f"stop-{key[1]}", daemon=True)
            thread.start()
            self._stopping.append(thread)

    # -- HTTP -----------------------------------------------------------------------------------------------

    def _get(self, path: str) -> dict[str, Any] | None:
        r = self.http.get(path)
        return None if r.status_code == 404 else r.raise_for_status().json()

    def _list(self, resource: tuple[str, str]) -> list[dict[str, Any]]:
        items = self.http.get(f"/apis/{resource[0]}/{resource[1]}").raise_for_status().json()["items"]
        return [
            o for o in items if self.namespaces is None or o["metadata"].get("namespace") in self.namespaces
        ]

    def _patch(
        self, resource: tuple[str, str], ns: str, name: str, body: dict[str, Any], sub: str = ""
    ) -> None:
        path = f"/apis/{resource[0]}/namespaces/{ns}/{resource[1]}/{name}" + (f"/{sub}" if sub else "")
        r = self.http.patch(path, json=body, headers=MERGE)
        if r.status_code != 404:  # deleted meanwhile: nothing to write
            r.raise_for_status()


def _cluster_status(obj: dict[str, Any], local: LocalRayCluster) -> dict[str, Any]:
    status = local.status(stamp(now()))
    if local.error:
        status["reason"] = local.error
    return {k: v for k, v in status.items() if v not in ("", None)}


def _comparable(status: dict[str, Any] | None) -> dict[str, Any]:
    """utils.InconsistentRayClusterStatus: the cluster status without its timestamps."""
    return {k: v for k, v in (status or {}).items() if k != "lastUpdateTime"}


def _from_ms(ms: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc)
