"""bench/api_latency.py still runs end to end and prints its ratio (a few calls; its figures are not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from harness import KUBERAY_RAYJOBS

from tests.conftest import ROOT


@pytest.mark.skipif(not KUBERAY_RAYJOBS.is_file(), reason=f"KubeRay CRDs not found at {KUBERAY_RAYJOBS}")
def test_api_latency_bench_prints_the_ratio_and_the_apis_cpu_per_call():
    r = subprocess.run([sys.executable, "bench/api_latency.py", "--clients", "2", "--rounds", "2", "--repeats", "2"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    assert result["api"]["calls"] == result["direct"]["calls"] == 2 * 2 * 2 * 3
    assert result["ratio_p50"] > 0 and len(result["ratios"]) == 2
    assert set(result["cpu_ms_per_call"]) == {"api", "emulator_direct", "emulator_behind_api"}
    assert any(line.startswith("ratio (API / direct") for line in lines)
