"""Operator at scale: create N TrainingJobs against the API emulator and time create -> RayJob exists.

Prints p50/p99 of that latency, the operator's peak RSS and CPU, and the ratio of that p99 to a
plain create round-trip measured in the same run (so the figure travels across machines). Last line: JSON.

    python bench/operator_scale.py [--jobs 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import httpx
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
KUBERAY = ROOT.parent / "shared" / "kuberay" / "ray.io_rayjobs.yaml"
EMULATOR = ROOT / "tests" / "integration" / "k8s" / "emulator.py"
TJ = "/apis/kubetrain.dev/v1alpha1/namespaces/{ns}/trainingjobs"
RJ = "/apis/ray.io/v1/namespaces/{ns}/rayjobs"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def job(name: str, ns: str) -> dict:
    body = yaml.safe_load((ROOT / "jobs/k8s/smollm2-lora.yaml").read_text())
    body["metadata"] = {"name": name, "namespace": ns}
    return body


def cpu_seconds(pid: int) -> float:
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def kubeconfig_for(url: str) -> str:
    return json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
        "clusters": [{"name": "emulator", "cluster": {"server": url}}],
        "users": [{"name": "emulator", "user": {"token": "emulator-token"}}],
        "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "emulator"}}],
    })  # fmt: skip


def peak_rss_mb(pid: int) -> float:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--baseline", type=int, default=300, help="plain creates for the baseline")
    args = parser.parse_args()
    if not KUBERAY.is_file():
        print(json.dumps({"error": f"KubeRay CRDs not found at {KUBERAY}"}))
        return 2

    # The emulator in its own process, so that its GIL is not shared with this client or the operator.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    emulator = subprocess.Popen([sys.executable, str(EMULATOR), str(KUBERAY)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)  # fmt: skip
    url = emulator.stdout.readline().strip()
    client = httpx.Client(base_url=url, timeout=60)

    # Baseline: a plain create round-trip, no operator watching that namespace.
    baseline = []
    for i in range(args.baseline):
        started = time.perf_counter()
        client.post(TJ.format(ns="baseline"), json=job(f"b{i}", "baseline")).raise_for_status()
        baseline.append(time.perf_counter() - started)

    # The operator, in its own process, watching the bench namespace.
    with tempfile.TemporaryDirectory() as tmp:
        kubeconfig = pathlib.Path(tmp) / "config"
        kubeconfig.write_text(kubeconfig_for(url))
        env = {**os.environ, "KUBECONFIG": str(kubeconfig), "KUBETRAIN_METRICS_PORT": "0"}
        log = open(pathlib.Path(tmp) / "operator.log", "w")  # noqa: SIM115
        operator = subprocess.Popen([sys.executable, "-m", "kubetrain.control", "--namespace", "bench"], env=env,
                                    stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)  # fmt: skip
        try:
            seen: dict[str, float] = {}
            done = threading.Event()

            def watch() -> None:
                with (
                    httpx.Client(base_url=url, timeout=None) as w,
                    w.stream(
                        "GET", RJ.format(ns="bench"), params={"watch": "true", "timeoutSeconds": "3600"}
                    ) as stream,
                ):
                    for line in stream.iter_lines():
                        if line:
                            event = json.loads(line)
                            seen.setdefault(event["object"]["metadata"]["name"], time.perf_counter())
                            if len(seen) >= args.jobs:
                                done.set()
                                return

            threading.Thread(target=watch, daemon=True).start()
            # wait until the operator serves: one warm-up job goes all the way
            client.post(TJ.format(ns="bench"), json=job("warmup", "bench")).raise_for_status()
            deadline = time.monotonic() + 120
            while "warmup" not in seen:
                if time.monotonic() > deadline or operator.poll() is not None:
                    raise SystemExit("the operator did not start")
                time.sleep(0.05)
            seen.clear()
            cpu_before = cpu_seconds(operator.pid)

            created: dict[str, float] = {}
            started = time.perf_counter()
            for i in range(args.jobs):
                name = f"job-{i:05d}"
                created[name] = time.perf_counter()
                client.post(TJ.format(ns="bench"), json=job(name, "bench")).raise_for_status()
            create_wall = time.perf_counter() - started
            if not done.wait(timeout=900):
                raise SystemExit(f"only {len(seen)} of {args.jobs} RayJobs appeared")
            total_wall = time.perf_counter() - started
            rss = peak_rss_mb(operator.pid)
            cpu = cpu_seconds(operator.pid) - cpu_before
        finally:
            operator.terminate()
            try:
                operator.wait(timeout=30)
            except subprocess.TimeoutExpired:
                operator.kill()
            log.close()
    rayjobs = len(client.get(RJ.format(ns="bench")).json()["items"])
    emulator.stdin.close()
    emulator.wait(timeout=30)

    latency = [seen[name] - created[name] for name in created]
    result = {
        "jobs": args.jobs,
        "rayjobs": rayjobs - 1,  # less the warm-up job
        "p50_create_to_rayjob_s": round(percentile(latency, 50), 4),
        "p99_create_to_rayjob_s": round(percentile(latency, 99), 4),
        "mean_create_to_rayjob_s": round(statistics.fmean(latency), 4),
        "create_burst_s": round(create_wall, 2),
        "all_rayjobs_s": round(total_wall, 2),
        "rayjobs_per_s": round(args.jobs / total_wall, 1),
        "operator_peak_rss_mb": round(rss, 1),
        "operator_cpu_s": round(cpu, 1),
        "operator_cpu_ms_per_job": round(cpu / args.jobs * 1000, 1),
        "baseline_p50_create_s": round(percentile(baseline, 50), 4),
        "baseline_p99_create_s": round(percentile(baseline, 99), 4),
        # the plain create round-trip, as its median (steadier than its own p99 on a shared machine)
        "ratio_p99_to_create": round(percentile(latency, 99) / percentile(baseline, 50), 1),
        "ratio_p99_to_baseline_p99": round(percentile(latency, 99) / percentile(baseline, 99), 1),
    }
    print(f"{args.jobs} TrainingJobs: create -> RayJob p50 {result['p50_create_to_rayjob_s']}s, "
          f"p99 {result['p99_create_to_rayjob_s']}s; all RayJobs after {result['all_rayjobs_s']}s "
          f"({result['rayjobs_per_s']}/s); operator peak RSS {result['operator_peak_rss_mb']} MB, "
          f"CPU {result['operator_cpu_ms_per_job']} ms/job; "
          f"plain create p50 {result['baseline_p50_create_s']}s (p99 ratio {result['ratio_p99_to_create']}x)")  # fmt: skip
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
