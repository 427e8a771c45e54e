"""The layer rule (DESIGN.md, Style 4): spec <- schema/render <- control/api/client/cli; runtime imports spec only.

Module-level imports only: a function may import the runtime lazily (the local backend does).
"""

from __future__ import annotations

import ast
import pathlib

import pytest

from tests.conftest import ROOT

PKG = ROOT / "service" / "kubetrain"
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
ALLOWED = {  # layer -> kubetrain layers it may import at module level
    "spec": set(),
    "schema": {"spec"},
    "render": {"spec", "schema"},
    "control": {"spec", "schema", "render"},
    "api": {"spec", "schema", "render", "control", "client"},
    "client": {"spec", "schema", "render", "control"},  # control/kube.py: the one way to connect
    "cli": {"spec", "schema", "render", "control", "client", "api", "cli"},
    "runtime": {"spec", "runtime"},
}


def module_imports(path: pathlib.Path) -> list[str]:
    """Absolute names imported at module level (not inside functions), relative imports resolved."""
    tree = ast.parse(path.read_text())
    package = path.relative_to(PKG.parent).with_suffix("").parts[:-1]
    out = []
    for node in tree.body:
        nodes = [node]
        if isinstance(node, (ast.If, ast.Try)):
            nodes = list(ast.walk(node))
        for n in nodes:
            if isinstance(n, ast.Import):
                out += [a.name for a in n.names]
            elif isinstance(n, ast.ImportFrom):
                if n.level:
                    base = list(package[: len(package) - n.level + 1])
                    out.append(".".join(base + ([n.module] if n.module else [])))
                else:
                    out.append(n.module or "")
    return out


FILES = sorted(p for p in PKG.rglob("*.py"))


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PKG)))
def test_layer_rule(path):
    rel = path.relative_to(PKG).parts
    layer = rel[0] if len(rel) > 1 else None
    for name in module_imports(path):
        top = name.split(".")[0]
        if layer != "runtime":
            assert top not in HEAVY, f"{path.relative_to(ROOT)} imports {name} (only runtime/ may)"
        if top == "kubetrain" and layer is not None and len(name.split(".")) > 1:
            target = name.split(".")[1]
            if target in ALLOWED and target != layer:
                assert target in ALLOWED[layer], (
                    f"{path.relative_to(ROOT)} ({layer}) imports kubetrain.{target}"
                )


def test_control_plane_starts_without_the_training_stack():
    import subprocess
    import sys

    code = (
        "import sys, kubetrain.spec, kubetrain.cli.main; "
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in %r); print(heavy)" % (HEAVY,)
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
