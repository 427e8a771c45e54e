"""kopf glue: watch TrainingJobs and their RayJobs, and run decide()'s actions through the one API module."""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import time
import weakref
from typing import Any

import kopf

from .. import API_VERSION, GROUP, KIND, VERSION
from ..render import PlatformConfig, rayjob_name
from .decide import Create, DeleteCluster, Event, PatchStatus, Requeue, SetSuspend, decide
from .kube import Kube
from .metrics import Metrics

log = logging.getLogger("kubetrain.operator")
MANAGED = {"app.kubernetes.io/managed-by": "kubetrain-operator"}


class State:
    """Process-wide operator state: the API client, platform config, metrics and per-job locks."""

    kube: Kube | None = None
    platform: PlatformConfig = PlatformConfig()
    metrics: Metrics = Metrics()
    locks: weakref.WeakValueDictionary[tuple[str, str], asyncio.Lock] = weakref.WeakValueDictionary()
    retries: set[asyncio.Task] = set()  # strong references, so pending retries are not garbage-collected
    timers: dict[
        tuple[str, str], asyncio.TimerHandle
    ] = {}  # one pending "look again" per job (clean-up TTLs)


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.posting.enabled = False  # our own Events only: fewer API calls, narrower RBAC
    settings.watching.server_timeout = int(os.environ.get("KUBETRAIN_WATCH_TIMEOUT", "300"))
    settings.watching.client_timeout = settings.watching.server_timeout + 30
    settings.queueing.worker_limit = int(os.environ.get("KUBETRAIN_WORKERS", "0")) or None  # None: no limit
    settings.scanning.disabled = True  # the resources are known; no CRD/namespace watching needed
    State.platform = PlatformConfig.load()
    port = int(os.environ.get("KUBETRAIN_METRICS_PORT", "0") or 0)
    if port:
        State.metrics.serve(port, addr=os.environ.get("KUBETRAIN_METRICS_ADDR", "0.0.0.0"))


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    info = kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)
    if info is not None:
        State.kube = Kube.from_connection(info)
    return info


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    if State.kube is not None:
        await State.kube.close()


@kopf.on.event(GROUP, VERSION, "trainingjobs")
async def trainingjob_event(
    event: dict[str, Any], body: kopf.Body, namespace: str, name: str, **_: Any
) -> None:
    if event.get("type") == "DELETED":
        State.metrics.observe_phase(namespace, name, None)
        return
    status, meta = body.get("status") or {}, body.get("metadata") or {}
    if (
        event.get("type") == "MODIFIED"
        and status.get("phase")
        and status.get("observedGeneration") == meta.get("generation")
    ):
        State.metrics.observe_phase(namespace, name, status.get("phase"))
        return  # only the status moved (our own patch, or the runtime's progress): the spec needs nothing new
    await reconcile(namespace, name, body=dict(body), trigger="trainingjob")


@kopf.on.event("ray.io", "v1", "rayjobs", labels=MANAGED)
async def rayjob_event(event: dict[str, Any], body: kopf.Body, namespace: str, **_: Any) -> None:
    owners = [o for o in body.get("metadata", {}).get("ownerReferences", []) if o.get("kind") == KIND]
    for owner in owners:
        await reconcile(namespace, owner["name"], body=None, trigger="rayjob")


RETRY_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


async def reconcile(
    namespace: str, name: str, body: dict[str, Any] | None, trigger: str, attempt: int = 0
) -> None:
    """Observe, decide, act: safe to run any number of times, concurrently and across restarts."""
    kube = State.kube
    assert kube is not None, "login did not run"
    lock = State.locks.get((namespace, name))
    if lock is None:
        lock = State.locks[(namespace, name)] = asyncio.Lock()
    started = time.perf_counter()
    State.metrics.reconciles.labels(trigger=trigger).inc()
    try:
        async with lock:
            job = body if body is not None else await kube.get(API_VERSION, KIND, namespace, name)
            if job is None:
                return
            job.setdefault("metadata", {}).setdefault("namespace", namespace)
            rayjob = await kube.get("ray.io/v1", "RayJob", namespace, rayjob_name(name))
            for action in decide(job, rayjob, now(), State.platform):
                await act(kube, job, namespace, action)
            State.metrics.observe_phase(namespace, name, (job.get("status") or {}).get("phase"))
    except Exception:
        State.metrics.errors.inc()
        log.exception("reconcile of %s/%s failed (attempt %d)", namespace, name, attempt + 1)
        if attempt + 1 < len(RETRY_DELAYS):  # events do not repeat by themselves: try again later, afresh
            State.retries.add(task := asyncio.create_task(retry(namespace, name, attempt + 1)))
            task.add_done_callback(State.retries.discard)
    finally:
        State.metrics.latency.observe(time.perf_counter() - started)


async def retry(namespace: str, name: str, attempt: int) -> None:
    await asyncio.sleep(RETRY_DELAYS[attempt - 1])
    await reconcile(namespace, name, body=None, trigger="retry", attempt=attempt)


def requeue(namespace: str, name: str, seconds: float) -> None:
    """Reconcile the job again in `seconds` (replacing an earlier timer; a restart re-lists every job anyway)."""
    key = (namespace, name)
    if (old := State.timers.pop(key, None)) is not None:
        old.cancel()

    def fire() -> None:
        State.timers.pop(key, None)
        State.retries.add(task := asyncio.create_task(reconcile(namespace, name, body=None, trigger="timer")))
        task.add_done_callback(State.retries.discard)

    State.timers[key] = asyncio.get_running_loop().call_later(max(seconds, 0.0) + 0.5, fire)


async def act(kube: Kube, job: dict[str, Any], namespace: str, action: Any) -> None:
    name = job["metadata"]["name"]
    if isinstance(action, Create):
        for obj in action.objects:
            obj["metadata"]["namespace"] = namespace
            created = await kube.create(obj)
            if created and obj["kind"] == "RayJob":
                State.metrics.created.inc()
    elif isinstance(action, DeleteCluster):
        await kube.delete("ray.io/v1", "RayCluster", namespace, action.name)
    elif isinstance(action, Requeue):
        requeue(namespace, name, action.seconds)
    elif isinstance(action, SetSuspend):
        await kube.patch_rayjob_suspend(namespace, action.name, action.suspend)
    elif isinstance(action, PatchStatus):
        await kube.patch_status(namespace, name, action.status)
        job["status"] = {**(job.get("status") or {}), **action.status}
    elif isinstance(action, Event):
        try:
            await kube.event(job, action.type, action.reason, action.message)
        except Exception:  # an Event is a courtesy; losing one must not stop the reconcile
            log.warning("could not post event %s on %s/%s", action.reason, namespace, name, exc_info=True)
