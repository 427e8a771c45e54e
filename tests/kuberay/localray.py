"""What the kubelet and KubeRay's pod builder would do with one RayCluster's pods, done on this machine.

Each pod of a RayCluster becomes a `ray start --block` process (KubeRay's own command line, pod.go
`generateRayStartCommand` at v1.7.0: rayStartParams, then `num-cpus` / `memory` / `num-gpus` from the Ray container's
limits, `--resources` as the shell would read it), with the pod's environment (`env` values, `secretKeyRef` and
`configMapKeyRef` read from the test Kubernetes API, `fieldRef`) and its volumes made into directories under a
per-pod root: ConfigMap and Secret volumes as files, emptyDir as an empty directory, a PersistentVolumeClaim as a
directory shared by every pod that mounts the claim (and kept across clusters, like a real volume). An absolute
path in the entrypoint or an env value that lies under a mount path is mapped to the same path under the pod's
root. The "image" is this machine's virtualenv: PATH starts with its bin directory; HOME is the pod's own (a fresh
container has no ~/.ray token, so Ray's token authentication stays off, as in KubeRay without authOptions).

Changed for one shared 2-core machine, and nothing else: Ray's ports are free ports (KubeRay's fixed 6379, 8080 and
52365 would collide between pods here), the dashboard is off (dashboardURL is written as KubeRay computes it, not
served), the object store is capped small (OBJECT_STORE_BYTES) and every cluster has its own short temp dir.
Nodes advertise the logical CPUs their pods ask for, not this machine's cores. Not modelled: init containers,
envFrom, `$(VAR)` expansion, subPath, probes, the autoscaler, GCS fault tolerance, TLS and token auth options.
"""

from __future__ import annotations

import base64
import json
import os
import pathlib
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psutil

OBJECT_STORE_BYTES = 96 * 2**20  # Ray's minimum is 75 MiB; several clusters may share this machine's /dev/shm
# rayStartParams that name this pod's network identity or ports: replaced by free local ones (module docstring)
MACHINE_PARAMS = {"address", "port", "node-ip-address", "dashboard-host", "dashboard-port", "dashboard-agent-listen-port",
                  "metrics-export-port", "include-dashboard", "block", "temp-dir", "object-store-memory"}  # fmt: skip
GPU_KEYS = ("nvidia.com/gpu", "amd.com/gpu")  # utils.IsGPUResourceKey
KEEP_ENV = re.compile(
    r"^(LANG|LC_.*|TZ|TERM|SSL_CERT_.*|REQUESTS_CA_BUNDLE|CURL_CA_BUNDLE|PYTHONDONTWRITEBYTECODE)$"
)
RAY = os.path.join(os.path.dirname(sys.executable), "ray")  # the image's `ray` (this virtualenv)
STOP_WAIT_S = 3.0  # Ray's job supervisor: SIGTERM, then SIGKILL after RAY_JOB_STOP_WAIT_TIME_S (3 s)
QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)$")
SUFFIX = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
          "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}  # fmt: skip


class PodNotReady(Exception):
    """A pod cannot start yet (a missing Secret or ConfigMap: CreateContainerConfigError / ContainerCreating)."""


def quantity_value(text: str | int | float) -> int:
    """resource.Quantity.Value(): the quantity rounded up to an integer ("500m" -> 1, "8Gi" -> 8589934592)."""
    match = QUANTITY.match(str(text).strip())
    if not match or match.group(2) not in SUFFIX:
        raise ValueError(f"not a Kubernetes quantity: {text!r}")
    value = float(match.group(1)) * SUFFIX[match.group(2)]
    return int(-(-value // 1))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_start_params(group: dict[str, Any]) -> dict[str, str]:
    """rayStartParams as KubeRay completes them from the Ray container's resources (the first container)."""
    params = {k: str(v) for k, v in (group.get("rayStartParams") or {}).items()}
    container = group["template"]["spec"]["containers"][0]
    limits = (container.get("resources") or {}).get("limits") or {}
    requests = (container.get("resources") or {}).get("requests") or {}
    if "num-cpus" not in params:
        cpu = limits.get("cpu") or requests.get("cpu")
        if cpu and quantity_value(cpu):
            params["num-cpus"] = str(quantity_value(cpu))
    if "memory" not in params and limits.get("memory"):
        params["memory"] = str(quantity_value(limits["memory"]))
    for key in sorted(limits):
        if key in GPU_KEYS and "num-gpus" not in params and quantity_value(limits[key]):
            params["num-gpus"] = str(quantity_value(limits[key]))
    return params


def ray_start_flags(params: dict[str, str]) -> list[str]:
    """convertParamMap, then split as bash splits KubeRay's `ray start ...` line (quotes around --resources)."""
    flags: list[str] = []
    for key in sorted(params):
        value = params[key]
        if key in MACHINE_PARAMS:
            continue
        if value.lower() in ("true", "false") and key not in ("log-color", "include-log-monitor"):
            flags += [f"--{key}"] if value.lower() == "true" else []
        else:
            flags += shlex.split(f"--{key}={value}")
    return flags


@dataclass
class Pod:
    """One materialised pod: its root directory, environment, working directory and mount paths."""

    name: str
    root: pathlib.Path
    env: dict[str, str]
    mounts: list[str] = field(default_factory=list)

    @property
    def workdir(self) -> pathlib.Path:
        return self.root / "home"

    def local(self, path: str) -> str:
        """A container path as this machine sees it: under the pod's root when it lies under (or above) a mount."""
        if not path.startswith("/"):
            return path
        clean = path.rstrip("/") or "/"
        for mount in self.mounts:
            if clean == mount or clean.startswith(mount + "/") or mount.startswith(clean + "/"):
                return str(self.root) + clean
        return path

    def command(self, line: str) -> str:
        """A shell command line with its container paths mapped (the entrypoint)."""
        return shlex.join(self.local(token) for token in shlex.split(line))


class Materialiser:
    """Pod templates -> Pods, reading Secrets and ConfigMaps from the Kubernetes API (HTTP)."""

    def __init__(self, get: Callable[[str], dict | None], claims: pathlib.Path, extra_env: dict[str, str]):
        self.get, self.claims, self.extra_env = get, claims, extra_env

    def pod(self, template: dict[str, Any], namespace: str, name: str, root: pathlib.Path) -> Pod:
        spec = template.get("spec") or {}
        container = spec["containers"][0]
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        pod = Pod(name, root, {})
        (root / "home").mkdir(parents=True, exist_ok=True)
        for mount in container.get("volumeMounts") or []:
            path = mount["mountPath"].rstrip("/")
            self._volume(volumes.get(mount["name"]) or {}, namespace, root / path.lstrip("/"))
            pod.mounts.append(path)
        pod.env = self._base_env(root) | self.extra_env
        for var in container.get("env") or []:
            value = self._env_value(var, namespace, name)
            if value is not None:
                pod.env[var["name"]] = pod.local(value)
        return pod

    @staticmethod
    def _base_env(root: pathlib.Path) -> dict[str, str]:
        """The image's environment: this virtualenv first on PATH, a fresh HOME, locale and CA settings."""
        keep = {k: v for k, v in os.environ.items() if KEEP_ENV.match(k)}
        path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "/usr/bin:/bin")])
        return {**keep, "PATH": path, "HOME": str(root / "home")}

    def _env_value(self, var: dict[str, Any], namespace: str, pod_name: str) -> str | None:
        if "value" in var:
            return str(var["value"])
        source = var.get("valueFrom") or {}
        if "secretKeyRef" in source:
            return self._key(source["secretKeyRef"], "secrets", namespace, decode=True)
        if "configMapKeyRef" in source:
            return self._key(source["configMapKeyRef"], "configmaps", namespace, decode=False)
        if "fieldRef" in source:
            fields = {"metadata.namespace": namespace, "metadata.name": pod_name, "status.podIP": "127.0.0.1",
                      "status.hostIP": "127.0.0.1", "spec.nodeName": socket.gethostname()}  # fmt: skip
            return fields.get(source["fieldRef"]["fieldPath"], "")
        return None

    def _key(self, ref: dict[str, Any], plural: str, namespace: str, decode: bool) -> str | None:
        obj = self.get(f"/api/v1/namespaces/{namespace}/{plural}/{ref['name']}")
        data = _data(obj, decode) if obj else None
        if data is None or ref["key"] not in data:
            if ref.get("optional"):
                return None
            raise PodNotReady(f"{plural[:-1]} {namespace}/{ref['name']} (key {ref['key']}) not found")
        return data[ref["key"]]

    def _volume(self, volume: dict[str, Any], namespace: str, target: pathlib.Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        if "persistentVolumeClaim" in volume:
            claim = self.claims / namespace / volume["persistentVolumeClaim"]["claimName"]
            claim.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                target.symlink_to(claim, target_is_directory=True)
            return
        target.mkdir(parents=True, exist_ok=True)
        for kind, plural, name_key in (
            ("configMap", "configmaps", "name"),
            ("secret", "secrets", "secretName"),
        ):
            if kind in volume:
                source = volume[kind]
                obj = self.get(f"/api/v1/namespaces/{namespace}/{plural}/{source[name_key]}")
                if obj is None:
                    if source.get("optional"):
                        return
                    raise PodNotReady(
                        f"{kind} volume: {plural[:-1]} {namespace}/{source[name_key]} not found"
                    )
                data = _data(obj, decode=kind == "secret") or {}
                items = source.get("items") or [{"key": k, "path": k} for k in data]
                for item in items:
                    (target / item["path"]).parent.mkdir(parents=True, exist_ok=True)
                    (target / item["path"]).write_text(data.get(item["key"], ""))


def _data(obj: dict[str, Any], decode: bool) -> dict[str, str]:
    data = dict(obj.get("stringData") or {})
    for key, value in (obj.get("data") or {}).items():
        data[key] = base64.b64decode(value).decode() if decode else value
    return data


class Process:
    """A child process in its own session (so its whole process group can be stopped), with its log file."""

    def __init__(self, args: list[str] | str, env: dict[str, str], cwd: pathlib.Path, log: pathlib.Path,
                 shell: bool = False):  # fmt: skip
        log.parent.mkdir(parents=True, exist_ok=True)
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(args, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True, shell=shell)  # fmt: skip

    def pids(self) -> set[int]:
        """This process and every descendant alive now."""
        try:
            me = psutil.Process(self.proc.pid)
            return {me.pid, *(c.pid for c in me.children(recursive=True))}
        except psutil.NoSuchProcess:
            return set()

    def stop(self, wait: float = STOP_WAIT_S) -> None:
        """SIGTERM, then SIGKILL to whatever of its tree is left after `wait` seconds (by pid)."""
        stop_all([self], wait)


def stop_all(processes: list[Process], wait: float) -> None:
    """Stop several process trees at once: SIGTERM to every process, SIGKILL to what is left after `wait` s."""
    trees = set().union(*(p.pids() for p in processes)) if processes else set()
    _signal(trees, signal.SIGTERM)
    _, alive = psutil.wait_procs(_procs(trees), timeout=wait)
    _signal({p.pid for p in alive}, signal.SIGKILL)
    psutil.wait_procs(_procs({p.pid for p in alive}), timeout=5)
    for process in processes:
        process.proc.wait()


def _procs(pids: set[int]) -> list[psutil.Process]:
    out = []
    for pid in pids:
        try:
            out.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    return out


def _signal(pids: set[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


@dataclass
class JobInfo:
    """What Ray's job API reports for one submission (dashboard/modules/job/common.py JobInfo)."""

    status: str = "PENDING"
    message: str = "Job has not started yet."
    start_time: int = 0  # ms
    end_time: int = 0
    driver_exit_code: int | None = None


class Driver:
    """A submitted entrypoint, run as Ray's job supervisor runs it: `sh -c ENTRYPOINT` with RAY_ADDRESS set."""

    def __init__(self, job_id: str, entrypoint: str, pod: Pod, gcs: str, log: pathlib.Path):
        self.job_id, self.info = job_id, JobInfo()
        env = {**pod.env, "RAY_ADDRESS": gcs, "PYTHONUNBUFFERED": "1", "RAY_JOB_SUBMISSION_ID": job_id}
        self.info.start_time = int(time.time() * 1000)
        self.process = Process(pod.command(entrypoint), env, pod.workdir, log, shell=True)
        self.info.status, self.info.message = "RUNNING", "Job is currently running."
        self._stopped = False

    def poll(self) -> JobInfo:
        code = self.process.proc.poll()
        if code is not None and self.info.status == "RUNNING":
            self.info.end_time, self.info.driver_exit_code = int(time.time() * 1000), code
            if self._stopped:
                self.info.status, self.info.message = "STOPPED", "Job was intentionally stopped."
            elif code == 0:
                self.info.status, self.info.message = "SUCCEEDED", "Job finished successfully."
            else:
                tail = "\n".join(self.process.log.read_text(errors="replace").splitlines()[-10:])
                self.info.status = "FAILED"
                self.info.message = (
                    f"Job entrypoint command failed with exit code {code}, last available logs "
                    f"(truncated to 20,000 chars):\n{tail[-20000:]}"
                    if tail
                    else f"Job entrypoint command failed with exit code {code}. No logs available."
                )
        return self.info

    def stop(self) -> None:
        self._stopped = True
        self.process.stop()
        self.poll()


class LocalRayCluster:
    """The pods of one RayCluster as Ray nodes on this machine; started in the background, stopped as a whole."""

    def __init__(
        self, namespace: str, name: str, spec: dict[str, Any], pods: Materialiser, root: pathlib.Path
    ):
        self.namespace, self.name, self.spec, self.materialiser = namespace, name, spec, pods
        self.root = root
        self.temp = pathlib.Path(tempfile.mkdtemp(prefix="kr-", dir="/tmp"))  # short: Ray's socket paths
        self.gcs_port = free_port()
        self.nodes: list[Process] = []
        self.head: Pod | None = None
        self.drivers: dict[str, Driver] = {}
        self.ready = threading.Event()
        self.error: str | None = None
        self.stopped = False
        self.lock = threading.Lock()
        self.workers = sum(
            replicas(g) * int(g.get("numOfHosts") or 1) for g in spec.get("workerGroupSpecs") or []
        )
        self.thread = threading.Thread(target=self._start, name=f"raycluster-{name}", daemon=True)

    @property
    def gcs(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    def start(self) -> LocalRayCluster:
        self.thread.start()
        return self

    def _start(self) -> None:
        try:
            head_group = self.spec["headGroupSpec"]
            self.head = self._pod(head_group, f"{self.name}-head")
            args = [RAY, "start", "--head", f"--port={self.gcs_port}", f"--temp-dir={self.temp}",
                    "--include-dashboard=false", *self._common(head_group)]  # fmt: skip
            self._node(args, self.head)
            for group in self.spec.get("workerGroupSpecs") or []:
                for i in range(replicas(group) * int(group.get("numOfHosts") or 1)):
                    pod = self._pod(group, f"{self.name}-{group['groupName']}-worker-{i}")
                    self._node([RAY, "start", f"--address={self.gcs}", *self._common(group)], pod)
            self.ready.set()
        except Exception as e:  # the controller reports it; the cluster stays not ready
            self.error = f"{type(e).__name__}: {e}"

    @staticmethod
    def _common(group: dict[str, Any]) -> list[str]:
        params = ray_start_params(group)
        store = min(
            quantity_value(params.get("object-store-memory") or OBJECT_STORE_BYTES), OBJECT_STORE_BYTES
        )
        return ["--block", "--disable-usage-stats",
                f"--object-store-memory={store}", *ray_start_flags(params)]  # fmt: skip

    def _pod(self, group: dict[str, Any], name: str) -> Pod:
        while True:  # a pod waits (ContainerCreating) until its Secrets and ConfigMaps exist
            try:
                return self.materialiser.pod(group["template"], self.namespace, name, self.root / name)
            except PodNotReady:
                if self.stopped:
                    raise
                time.sleep(0.5)

    def _node(self, args: list[str], pod: Pod) -> None:
        with self.lock:
            if self.stopped:
                raise RuntimeError("cluster deleted while starting")
            env = {**pod.env, "RAY_CLUSTER_NAME": self.name, "RAY_CLOUD_INSTANCE_ID": pod.name,
                   "RAY_USAGE_STATS_KUBERAY_IN_USE": "1"}  # fmt: skip
            node = Process(args, env, pod.workdir, self.root / "logs" / f"{pod.name}.log")
            self.nodes.append(node)
        while "Ray runtime started" not in node.log.read_text(errors="replace"):
            if node.proc.poll() is not None:
                raise RuntimeError(f"`{' '.join(args)}` exited: {node.log.read_text()[-2000:]}")
            time.sleep(0.1)

    def submit(self, job_id: str, entrypoint: str) -> Driver:
        """Run the entrypoint on the head (K8sJobMode's `ray job submit`), once per job id."""
        with self.lock:
            if job_id not in self.drivers:
                assert self.head is not None and self.ready.is_set()
                log = self.root / "logs" / f"job-driver-{job_id}.log"
                self.drivers[job_id] = Driver(job_id, entrypoint, self.head, self.gcs, log)
            return self.drivers[job_id]

    def pids(self) -> set[int]:
        """Every process of this cluster alive now: nodes (raylet, GCS, Ray workers) and drivers."""
        out: set[int] = set()
        for process in [*self.nodes, *(d.process for d in self.drivers.values())]:
            out |= process.pids()
        return out

    def stop(self) -> None:
        """Pods deleted: drivers die with the head, then every node (SIGTERM, SIGKILL what is left)."""
        with self.lock:
            self.stopped = True
        for driver in list(self.drivers.values()):
            driver.stop()
        stop_all(self.nodes, wait=10.0)  # `ray start --block` drains, then stops its node's processes
        shutil.rmtree(self.temp, ignore_errors=True)  # Ray's session files (the pods' logs stay under root)

    def status(self, now: str) -> dict[str, Any]:
        """RayCluster status as KubeRay's RayCluster controller writes it once every pod is running."""
        groups = self.spec.get("workerGroupSpecs") or []
        head = self.spec["headGroupSpec"]
        cpus = sum(quantity_value(ray_start_params(g).get("num-cpus", "0")) * replicas(g) for g in groups)
        cpus += quantity_value(ray_start_params(head).get("num-cpus", "0"))
        return {
            "state": "ready" if self.ready.is_set() else "",
            "desiredWorkerReplicas": self.workers,
            "availableWorkerReplicas": self.workers if self.ready.is_set() else 0,
            "readyWorkerReplicas": self.workers if self.ready.is_set() else 0,
            "minWorkerReplicas": sum(int(g.get("minReplicas") or 0) for g in groups),
            "maxWorkerReplicas": sum(int(g.get("maxReplicas") or 0) for g in groups),
            "desiredCPU": str(cpus),
            "head": {
                "podName": f"{self.name}-head",
                "podIP": "127.0.0.1",
                "serviceIP": "127.0.0.1",
                "serviceName": f"{self.name}-head-svc",
            },  # fmt: skip
            "endpoints": {"gcs-server": str(self.gcs_port)},
            "lastUpdateTime": now,
        }


def replicas(group: dict[str, Any]) -> int:
    """Worker pods of a group: replicas within [minReplicas, maxReplicas]; none while the group is suspended."""
    if group.get("suspend"):
        return 0
    low, high = int(group.get("minReplicas") or 0), int(group.get("maxReplicas") or 2**31 - 1)
    return max(low, min(high, int(group.get("replicas", low) or 0)))


def dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True)
