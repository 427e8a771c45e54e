"""The kubetrain command: exit codes and messages, no stack traces for user mistakes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def kubetrain(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kubetrain.cli.main", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        input=stdin,
        timeout=120,
    )


def test_validate_ok_prints_one_line_per_file():
    r = kubetrain("validate", "jobs/quickstart.yaml", "jobs/quickstart.yaml")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["jobs/quickstart.yaml: OK (TrainingJob quickstart)"] * 2


@pytest.mark.parametrize(
    "content,expected",
    [
        ("", "f.yaml: the document is empty"),
        ("- 1\n", "f.yaml:1: expected a mapping"),
        ("a: [\n", "f.yaml:2: YAML syntax error"),
        (
            "apiVersion: v9\nkind: TrainingJob\nmetadata: {name: a}\nspec: {model: {name_or_path: a/b}, data: {train: x}}\n",
            "f.yaml:1: apiVersion: got 'v9'",
        ),
        (
            "apiVersion: kubetrain.dev/v1alpha1\nkind: TrainingJob\nmetadata: {name: a}\nspec:\n  model: {name_or_path: a/b}\n"
            "  data: {train: x}\n  training: {learning_rate: -1, bogus: 1}\n",
            "f.yaml:7: spec.training.learning_rate: got -1: Input should be greater than 0",
        ),
    ],
)
def test_validate_reports_problems(tmp_path, content, expected):
    f = tmp_path / "f.yaml"
    f.write_text(content)
    r = subprocess.run(
        [sys.executable, "-m", "kubetrain.cli.main", "validate", "f.yaml"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert r.returncode == 1
    assert expected in r.stderr, r.stderr
    assert "Traceback" not in r.stderr + r.stdout


def test_validate_mixed_files_and_missing_file():
    r = kubetrain("validate", "jobs/quickstart.yaml", "does/not/exist.yaml")
    assert r.returncode == 1
    assert "jobs/quickstart.yaml: OK" in r.stdout
    assert "does/not/exist.yaml: no such file" in r.stderr


def test_validate_with_set_override():
    r = kubetrain("validate", "jobs/quickstart.yaml", "--set", "spec.training.learning_rate=0")
    assert r.returncode == 1
    assert "spec.training.learning_rate: got 0" in r.stderr


def test_schema_is_json_schema_of_the_file_format():
    r = kubetrain("schema")
    assert r.returncode == 0
    schema = json.loads(r.stdout)
    assert set(schema["required"]) >= {"metadata", "spec"}
    import jsonschema
    import yaml

    jsonschema.validate(yaml.safe_load((ROOT / "jobs/quickstart.yaml").read_text()), schema)


def test_run_rejects_invalid_spec_without_starting_anything(tmp_path):
    r = kubetrain("run", "jobs/quickstart.yaml", "--set", "spec.resources.workers=0")
    assert r.returncode == 1
    assert "spec.resources.workers: got 0" in r.stderr
    assert "Traceback" not in r.stderr


def test_run_reports_missing_data_file(tmp_path):
    job = (ROOT / "jobs/quickstart.yaml").read_text().replace("jobs/data/dates/train.jsonl", "nope.jsonl")
    (tmp_path / "j.yaml").write_text(job)
    r = subprocess.run(
        [sys.executable, "-m", "kubetrain.cli.main", "run", "j.yaml"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert r.returncode == 1
    assert "spec.data.train: 'nope.jsonl' does not exist" in r.stderr
    assert "Traceback" not in r.stderr
