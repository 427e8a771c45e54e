"""The Helm chart renders offline (helm-python-sdk) into valid objects that match the generated install."""

from __future__ import annotations

import kubernetes_validate
import pytest
import yaml

from kubetrain.render import PlatformConfig
from kubetrain.schema import install
from tests.conftest import ROOT

helm = pytest.importorskip("helm_python", reason="helm-python-sdk is not installed")
CHART = ROOT / "charts" / "kubetrain"


def rendered(values=None, namespace="kubetrain-system"):
    files = helm.Chart.load(CHART).render(
        values or {}, name="kubetrain", namespace=namespace, is_install=True
    )
    return [doc for text in files.values() for doc in yaml.safe_load_all(text) if doc]


def test_lint_is_clean():
    report = helm.lint(str(CHART), strict=True, kube_version="v1.32.0")
    assert report["errors"] == [] and [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize(
    "values",
    [{}, {"watchNamespaces": ["team-a", "team-b"], "image": {"tag": "0.2.0"},
          "platform": {"mlflow_tracking_uri": "http://mlflow:5000", "storage": "s3://b/runs",
                       "secrets": [{"name": "s3", "keys": {"AWS_ACCESS_KEY_ID": "id"}}]}}],
)  # fmt: skip
def test_renders_valid_objects_matching_the_generated_install(values):
    docs = rendered(values)
    for doc in docs:
        kubernetes_validate.validate(doc, "1.32.0", strict=True)
    by_kind = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    assert by_kind[("ClusterRole", "kubetrain-operator")]["rules"] == install.RULES
    assert by_kind[("ClusterRole", "kubetrain-runtime")]["rules"] == install.RUNTIME_RULES
    deployment = by_kind[("Deployment", "kubetrain-operator")]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    platform = PlatformConfig.model_validate(
        yaml.safe_load(by_kind[("ConfigMap", "kubetrain-operator-platform")]["data"]["platform.yaml"])
    )
    tag = (values.get("image") or {}).get("tag") or "0.1.0"
    assert container["image"] == platform.image == f"ghcr.io/kubetrain/kubetrain:{tag}"
    assert platform.mlflow_tracking_uri == (values.get("platform") or {}).get("mlflow_tracking_uri")
    namespaces = [container["args"][i + 1] for i, a in enumerate(container["args"]) if a == "--namespace"]
    assert namespaces == values.get("watchNamespaces", [])


def test_chart_ships_the_generated_crd():
    crds = helm.Chart.load(CHART).crds
    assert [c["name"] for c in crds] == ["crds/trainingjobs.kubetrain.dev.yaml"]
    assert yaml.safe_load(crds[0]["data"]) == yaml.safe_load((ROOT / "manifests/crd.yaml").read_text())
