"""The images' lock files pin what pyproject.toml asks for: a dependency change without `make images-lock` fails here.

images/<target>.lock is `pip freeze` of a tested build (images/lock.sh); the Dockerfile installs under it.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import ROOT

IMAGES = ROOT / "images"
EXTRAS = {"control": ["control"], "runtime": ["train"]}
HEAVY = {"torch", "ray", "transformers", "deepspeed", "peft", "mlflow", "datasets"}


def pins(target: str) -> dict[str, str]:
    out = {}
    for line in (IMAGES / f"{target}.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version and "@" not in line and "+" not in version, (
                f"{target}.lock: not an exact pin: {line}"
            )
            out[canonicalize_name(name)] = version
    return out


def requirements(*extras: str) -> list[Requirement]:
    out = subprocess.run(
        [sys.executable, str(IMAGES / "requirements.py"), str(ROOT / "pyproject.toml"), *extras],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    return [Requirement(line) for line in out.splitlines()]


@pytest.mark.parametrize("target", sorted(EXTRAS))
def test_every_requirement_is_pinned_inside_its_range(target):
    locked = pins(target)
    for req in requirements(*EXTRAS[target]):
        name = canonicalize_name(req.name)
        assert name in locked, f"{req} is not in images/{target}.lock: run `make images-lock`"
        assert req.specifier.contains(locked[name], prereleases=True), (
            f"images/{target}.lock pins {name}=={locked[name]}, outside {req}: run `make images-lock`"
        )


def test_the_project_constraints_hold_in_the_runtime_lock():
    locked = pins("runtime")
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        req = Requirement(line)
        assert req.specifier.contains(locked[canonicalize_name(req.name)]), line


def test_the_control_and_mlflow_images_carry_no_training_stack():
    assert not HEAVY & set(pins("control"))
    assert not (HEAVY - {"mlflow"}) & set(pins("mlflow"))
    assert {"mlflow", "psycopg", "psycopg-binary", "boto3"} <= set(pins("mlflow"))
