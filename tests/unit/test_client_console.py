"""Output people copy from stays copyable when stdout is not a terminal (CI logs, `| tee`): the run summary's
title, paths, the `mlflow ui ...` command and the run URL are never wrapped."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
from types import SimpleNamespace
from kubetrain.runtime.run.console import RunConsole
deep = "/very/long/path/" + "nested-directory/" * 8
result = SimpleNamespace(job_name="a-job-with-a-rather-long-name-for-testing", validation_examples=1234,
    before={"eval_loss": 0.8, "eval_exact_match": 0.0}, after={"eval_loss": 0.01, "eval_exact_match": 0.97},
    samples_after=[], succeeded=True, error=None, steps=200, seconds=61.0, stopped_early=False,
    final_dir=deep + "final", run_dir=deep, tracking_note=None,
    mlflow_hint="mlflow ui --backend-store-uri sqlite:///" + deep + "mlflow.db --port 5000   then open "
                "http://127.0.0.1:5000/#/experiments/1/runs/0123456789abcdef0123456789abcdef")
console = RunConsole()
console.say("Resuming from the checkpoint at step 40 (" + deep + "checkpoint_00000040)")
console.summary(result)
"""


def test_summary_lines_are_whole_when_piped():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60,
                         env={"PATH": "/usr/bin:/bin", "COLUMNS": "40"}).stdout  # fmt: skip
    lines = out.splitlines()
    deep = "/very/long/path/" + "nested-directory/" * 8
    assert "a-job-with-a-rather-long-name-for-testing: held-out validation (1234 examples)" in lines
    assert f"Model/adapter: {deep}final" in lines
    assert f"Checkpoints:   {deep}" in lines
    assert any(ln.startswith("MLflow:        mlflow ui --backend-store-uri sqlite:///") and
               ln.endswith("runs/0123456789abcdef0123456789abcdef") for ln in lines), out  # fmt: skip
    assert f"Resuming from the checkpoint at step 40 ({deep}checkpoint_00000040)" in lines
