"""KubeStatusReporter (runtime, standard library only) against the emulator's status subresource."""

from __future__ import annotations

import pytest
from harness import TJ, trainingjob

from kubetrain.runtime.run.status_reporter import KubeStatusReporter

NS = "progress"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def job(api):
    api.create(TJ, NS, trainingjob("reported", NS))
    api.patch(TJ, NS, "reported", {"status": {"phase": "Running"}}, sub="status")
    yield "reported"
    api.delete(TJ, NS, "reported")


def progress(api):
    return api.get(TJ, NS, "reported")["status"]


def test_reports_merge_into_status_and_are_rate_limited(api, job):
    clock = Clock()
    reporter = KubeStatusReporter(str(api.http.base_url), NS, job, token="t", min_interval=5, clock=clock)
    reporter.report({"step": 1, "total_steps": 10, "percent": 10.0, "metrics": {"loss": 2.0}})
    status = progress(api)
    assert status["phase"] == "Running"  # the operator's part is untouched
    assert status["progress"]["step"] == 1 and status["metric"] == "loss=2"
    assert status["progress"]["updated"].endswith("Z")
    clock.now += 1
    reporter.report({"step": 2, "total_steps": 10})  # too soon: dropped
    assert progress(api)["progress"]["step"] == 1
    reporter.report({"step": 3, "total_steps": 10, "percent": 30.0}, final=True)  # final always goes
    assert progress(api)["progress"]["step"] == 3
    clock.now += 5
    reporter.report({"step": 4, "total_steps": 10, "percent": 40.0, "eta_seconds": float("nan"),
                     "metrics": {"loss": 1.0, "eval_loss": 1.5, "bad": float("inf")}, "mlflow_run_id": "r1"})  # fmt: skip
    status = progress(api)
    assert status["progress"]["step"] == 4 and "eta_seconds" not in status["progress"]
    assert status["progress"]["metrics"] == {"loss": 1.0, "eval_loss": 1.5}
    assert status["metric"] == "eval_loss=1.5" and status["mlflowRunId"] == "r1"
    assert reporter.sent == 3


def test_never_raises_and_warns_once(api, caplog):
    reporter = KubeStatusReporter(str(api.http.base_url), NS, "no-such-job", min_interval=0)
    for _ in range(3):
        reporter.report({"step": 1})
    unreachable = KubeStatusReporter("http://127.0.0.1:9", NS, "x", min_interval=0, timeout=2)
    unreachable.report({"step": 1})
    warnings = [r for r in caplog.records if "cannot report progress" in r.getMessage()]
    assert len(warnings) == 2 and reporter.sent == 0 and unreachable.sent == 0


@pytest.mark.parametrize(
    "env, expected",
    [
        ({}, None),
        ({"KUBETRAIN_JOB_NAME": "j"}, None),
        ({"KUBETRAIN_JOB_NAME": "j", "KUBETRAIN_JOB_NAMESPACE": "n"}, None),  # no cluster, no override
        ({"KUBETRAIN_JOB_NAME": "j", "KUBETRAIN_JOB_NAMESPACE": "n", "KUBETRAIN_KUBE_URL": "http://h:1"},
         "http://h:1/apis/kubetrain.dev/v1alpha1/namespaces/n/trainingjobs/j/status"),
    ],
)  # fmt: skip
def test_from_env(monkeypatch, env, expected):
    for name in (
        "KUBETRAIN_JOB_NAME",
        "KUBETRAIN_JOB_NAMESPACE",
        "KUBETRAIN_KUBE_URL",
        "KUBERNETES_SERVICE_HOST",
    ):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    reporter = KubeStatusReporter.from_env()
    assert (reporter.url if reporter else None) == expected
