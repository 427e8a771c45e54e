"""buildah for the image tests: vfs storage and chroot isolation (no Docker engine here), and images/build.sh."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.conftest import ROOT

ENV = {**os.environ, "STORAGE_DRIVER": "vfs", "BUILDAH_ISOLATION": "chroot"}
needs_buildah = pytest.mark.skipif(
    shutil.which("buildah") is None, reason="buildah is not installed (make test installs it)"
)


def buildah(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["buildah", *args], env=ENV, check=check, capture_output=True, text=True)


def build(target: str) -> None:
    """images/build.sh TARGET: cached layers make a rerun with unchanged sources cost seconds."""
    done = subprocess.run(
        [str(ROOT / "images" / "build.sh"), target], cwd=ROOT, env=ENV, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
