"""The layer rules (DESIGN.md, Style 4) as import-linter contracts (.importlinter): the package's layers, the
runtime's sweep -> run -> train, and no training stack in the control plane; imports inside functions count."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT

PKG = ROOT / "service" / "kubetrain"
LINT_IMPORTS = pathlib.Path(sys.executable).parent / "lint-imports"
HEAVY = {
    "torch",
    "ray",
    "deepspeed",
    "transformers",
    "peft",
    "datasets",
    "tokenizers",
    "mlflow",
    "accelerate",
}


def lint_imports(package_parent: pathlib.Path | None = None) -> subprocess.CompletedProcess:
    """`lint-imports` over .importlinter, on the package in package_parent (default: the installed one)."""
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}
    if package_parent is not None:
        env["PYTHONPATH"] = str(package_parent)
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_import_contracts_are_kept():
    result = lint_imports()
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


# (module, a lazy import it must not make, the contract that catches it): each contract can fail
VIOLATIONS = [
    ("spec/__init__.py", "from kubetrain import client", "The control plane is layered"),
    ("schema/crd.py", "from kubetrain.render import platform", "The control plane is layered"),
    ("runtime/train/__init__.py", "from kubetrain import control", "The runtime imports the spec only"),
    ("api/auth.py", "from kubetrain.runtime.run import job", "The control plane does not import the runtime"),
    ("runtime/train/__init__.py", "from kubetrain.runtime.run import job", "Inside the runtime"),
    ("runtime/run/__init__.py", "from kubetrain.runtime.sweep import driver", "Inside the runtime"),
    ("runtime/storage.py", "from kubetrain.runtime import contract, train", "Inside the runtime"),
    ("api/models.py", "import torch", "The control plane never imports the training stack"),
    ("cli/main.py", "import ray.tune", "The control plane never imports the training stack"),
]


@pytest.mark.parametrize("module,statement,contract", VIOLATIONS, ids=[f"{m}:{s}" for m, s, _ in VIOLATIONS])
def test_a_lazy_import_across_a_layer_breaks_a_contract(tmp_path, module, statement, contract):
    """A copy of the package with one import inside a function added: lint-imports fails, naming the contract
    (and perhaps others the new import chains through)."""
    shutil.copytree(PKG, tmp_path / "kubetrain", ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / "kubetrain" / module
    target.write_text(target.read_text() + f"\n\ndef _violation():\n    {statement}\n")
    result = lint_imports(tmp_path)
    assert result.returncode == 1, result.stdout[-4000:] + result.stderr[-2000:]
    broken = [line for line in result.stdout.splitlines() if " BROKEN" in line]
    assert any(line.startswith(contract) for line in broken), result.stdout[-4000:]


def test_control_plane_starts_without_the_training_stack():
    code = (
        "import sys, kubetrain.spec, kubetrain.cli.main; "
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in %r); print(heavy)" % (HEAVY,)
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
