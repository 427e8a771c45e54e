"""The SDK facade and its local backend: background runs whose state, log and errors are seen from any process."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from kubetrain.client import AlreadyExists, Invalid, JobFailed, NotFound, TrainingClient, errors, load
from kubetrain.spec import TrainingJob
from tests.conftest import ROOT


def kubetrain(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kubetrain.cli.main", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)  # fmt: skip


@pytest.fixture
def broken_job(tmp_path, monkeypatch) -> str:
    """The quickstart pointing at a data file that is not there: the run fails fast, before Ray starts."""
    monkeypatch.chdir(tmp_path)
    job = yaml.safe_load((ROOT / "jobs/quickstart.yaml").read_text())
    job["spec"]["data"]["train"] = "missing.jsonl"
    job["metadata"]["labels"] = {"team": "nlp"}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    return "job.yaml"


def test_load_takes_a_path_a_dict_or_a_job_with_overrides(minimal, tmp_path):
    (tmp_path / "j.yaml").write_text(yaml.safe_dump(minimal))
    from_path = load(tmp_path / "j.yaml", {"spec.training.learning_rate": 0.5})
    from_dict = load(minimal, {"spec.training.learning_rate": 0.5})
    from_job = load(TrainingJob.model_validate(minimal), {"spec.training.learning_rate": 0.5})
    assert from_path == from_dict == from_job and from_job.spec.training.learning_rate == 0.5
    with pytest.raises(Invalid) as e:
        load(tmp_path / "j.yaml", {"spec.training.learning_rate": -1})
    assert str(e.value).startswith(f"{tmp_path / 'j.yaml'}:")  # FILE:LINE: as `kubetrain validate` prints
    assert str(e.value).endswith(": spec.training.learning_rate: got -1: Input should be greater than 0")
    with pytest.raises(Invalid, match="no such file"):
        load(tmp_path / "nope.yaml")


@pytest.mark.parametrize("code,kind", [(401, errors.Unauthorized), (403, errors.Forbidden), (404, NotFound),
                                       (409, AlreadyExists), (422, Invalid), (500, errors.Unavailable)])  # fmt: skip
def test_http_codes_map_to_one_set_of_errors(code, kind):
    assert type(errors.from_status(code, "m")) is kind
    assert kind.http_status == code or code == 500


def test_local_job_runs_in_the_background_and_is_seen_from_other_processes(broken_job, tmp_path):
    tc = TrainingClient(root=tmp_path / ".kubetrain")
    name = tc.submit(broken_job)
    assert name == "quickstart" and tc.get(name).phase in ("Pending", "Running", "Failed")
    with pytest.raises(AlreadyExists):
        tc.submit(broken_job)
    with pytest.raises(JobFailed, match="spec.data.train: 'missing.jsonl' does not exist"):
        tc.wait(name, timeout=120, poll=0.1)
    info = tc.get(name)
    assert (info.phase, info.status.reason) == ("Failed", "InvalidSpec")
    assert any("missing.jsonl" in line for line in tc.logs(name))
    assert [j.name for j in tc.list(labels={"team": "nlp"})] == [name] and tc.list(labels={"team": "x"}) == []

    r = kubetrain("get", name, "-o", "json", "--root", ".kubetrain", cwd=tmp_path)  # another process
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["status"]["phase"] == "Failed"
    r = kubetrain("list", "--root", ".kubetrain", cwd=tmp_path)
    assert r.stdout.split("\n")[0].split() == ["NAME", "PHASE", "PROGRESS", "WORKERS", "METRIC", "AGE"]
    assert r.stdout.split("\n")[1].split()[:2] == [name, "Failed"]
    r = kubetrain("wait", name, "--root", ".kubetrain", "-q", cwd=tmp_path)
    assert r.returncode == 2 and "ended Failed" in r.stderr
    r = kubetrain("logs", name, "--root", ".kubetrain", cwd=tmp_path)
    assert "missing.jsonl" in r.stdout

    with pytest.raises(AlreadyExists, match="has finished"):
        tc.suspend(name)
    tc.delete(name)
    with pytest.raises(NotFound):
        tc.get(name)
    r = kubetrain("delete", name, "--root", ".kubetrain", cwd=tmp_path)
    assert r.returncode == 1 and r.stderr.strip() == 'error: trainingjob "quickstart" not found in default'


def test_cli_submit_reports_invalid_specs_like_validate(tmp_path):
    r = kubetrain("submit", str(ROOT / "jobs/quickstart.yaml"), "--set", "spec.resources.workers=0", "--root", ".kt",
                  cwd=tmp_path)  # fmt: skip
    assert r.returncode == 1
    assert "jobs/quickstart.yaml:" in r.stderr and "spec.resources.workers: got 0" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / ".kt" / "jobs").exists()


def test_cli_rest_backend_needs_a_url(tmp_path):
    r = kubetrain("list", "--backend", "rest", cwd=tmp_path)
    assert r.returncode == 1 and "url: the rest backend needs url=" in r.stderr
