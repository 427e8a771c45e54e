"""bench/operator_scale.py still runs end to end (a handful of jobs; its figures are not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from harness import KUBERAY_RAYJOBS

from tests.conftest import ROOT


@pytest.mark.skipif(not KUBERAY_RAYJOBS.is_file(), reason=f"KubeRay CRDs not found at {KUBERAY_RAYJOBS}")
def test_operator_scale_bench_runs():
    r = subprocess.run([sys.executable, "bench/operator_scale.py", "--jobs", "5", "--baseline", "5"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["jobs"] == result["rayjobs"] == 5
    assert {"p50_create_to_rayjob_s", "p99_create_to_rayjob_s", "operator_peak_rss_mb",
            "ratio_p99_to_create"} <= set(result)  # fmt: skip
