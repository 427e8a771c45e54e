"""The Helm chart renders offline (helm-python-sdk) into valid, least-privilege objects for every values file.

charts/kubetrain/ci/*-values.yaml are the values files (defaults; external PostgreSQL + S3 + API + Kueue +
ServiceMonitor; no MLflow). Core objects are checked by kubernetes-validate, the CRD against the generated
one, the two third-party kinds (ServiceMonitor, LocalQueue) field by field.
"""

from __future__ import annotations

import json

import kubernetes_validate
import pytest
import yaml

from kubetrain.render import PlatformConfig
from kubetrain.schema import chart, install
from tests.conftest import ROOT

helm = pytest.importorskip("helm_python", reason="helm-python-sdk is not installed")
CHART = ROOT / "charts" / "kubetrain"
NAMESPACE = "kubetrain-system"
VALUES_FILES = sorted((CHART / "ci").glob("*-values.yaml"))
THIRD_PARTY = {"monitoring.coreos.com/v1", "kueue.x-k8s.io/v1beta1"}


def load_values(path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


def rendered(values=None, namespace=NAMESPACE) -> list[dict]:
    files = helm.Chart.load(CHART).render(
        values or {}, name="kubetrain", namespace=namespace, is_install=True
    )
    return [
        doc
        for path, text in files.items()
        if path.endswith(".yaml")
        for doc in yaml.safe_load_all(text)
        if doc
    ]


def notes(values=None) -> str:
    files = helm.Chart.load(CHART).render(
        values or {}, name="kubetrain", namespace=NAMESPACE, is_install=True
    )
    return files["kubetrain/templates/NOTES.txt"]


def by_kind(docs) -> dict[tuple[str, str, str | None], dict]:
    return {(d["kind"], d["metadata"]["name"], d["metadata"].get("namespace")): d for d in docs}


def one(docs, kind, name) -> dict:
    [doc] = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def platform_of(docs) -> PlatformConfig:
    config = one(docs, "ConfigMap", "kubetrain-operator-platform")["data"]["platform.yaml"]
    return PlatformConfig.model_validate(yaml.safe_load(config))


def container(doc, name) -> dict:
    [c] = [c for c in doc["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    return c


def env_of(c) -> dict[str, dict]:
    return {e["name"]: e for e in c.get("env", [])}


@pytest.mark.parametrize("values_file", [None, *VALUES_FILES], ids=lambda p: p.name if p else "no-values")
def test_lint_is_clean(values_file):
    values = load_values(values_file) if values_file else None
    report = helm.lint(str(CHART), values, strict=True, kube_version="v1.32.0")
    # `helm lint --strict` fails on warnings (severity 2) and errors; INFO (a missing icon) passes
    assert report["errors"] == [] and [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("values_file", VALUES_FILES, ids=lambda p: p.name)
def test_every_object_is_valid(values_file):
    docs = rendered(load_values(values_file))
    assert len(by_kind(docs)) == len(docs), "two objects share kind, name and namespace"
    for doc in docs:
        if doc["apiVersion"] in THIRD_PARTY:
            continue  # no schema offline; checked field by field below
        kubernetes_validate.validate(doc, "1.32.0", strict=True)
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "kubetrain"
        if doc["kind"] not in {"ClusterRole", "ClusterRoleBinding"}:
            assert doc["metadata"]["namespace"]


@pytest.mark.parametrize("values_file", VALUES_FILES, ids=lambda p: p.name)
def test_pods_run_as_non_root_with_a_read_only_root(values_file):
    for doc in rendered(load_values(values_file)):
        if doc["kind"] not in {"Deployment", "StatefulSet"}:
            continue
        pod = doc["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, doc["metadata"]["name"]
        for c in pod["containers"] + pod.get("initContainers", []):
            assert c["securityContext"]["readOnlyRootFilesystem"] is True
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert c["resources"]["limits"]["memory"]


@pytest.mark.parametrize("values_file", VALUES_FILES, ids=lambda p: p.name)
def test_least_privilege(values_file):
    values = load_values(values_file)
    docs = rendered(values)
    roles = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ClusterRole"}
    assert roles["kubetrain-operator"]["rules"] == install.RULES
    assert roles["kubetrain-runtime"]["rules"] == install.RUNTIME_RULES
    allowed = {"kubetrain-operator", "kubetrain-runtime"}
    if (values.get("api") or {}).get("enabled"):
        allowed.add("kubetrain-api")
        assert roles["kubetrain-api"]["rules"] == install.API_RULES
    assert set(roles) == allowed, sorted(roles)
    for role in roles.values():
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], rule
            assert "secrets" not in rule["resources"], "no component reads Secrets through the API"
    assert not [d for d in docs if d["kind"] == "Role"]
    # the runtime role is bound in the job namespaces only, to the Ray pods' service account
    account = (values.get("platform") or {}).get("service_account", "kubetrain-runtime")
    bindings = [d for d in docs if d["kind"] == "RoleBinding"]
    expected = values.get("jobNamespaces", []) if account else []
    assert sorted(b["metadata"]["namespace"] for b in bindings) == sorted(expected)
    for b in bindings:
        assert b["roleRef"]["name"] == "kubetrain-runtime"
        assert b["subjects"] == [
            {"kind": "ServiceAccount", "name": account, "namespace": b["metadata"]["namespace"]}
        ]
    for b in (d for d in docs if d["kind"] == "ClusterRoleBinding"):
        assert b["roleRef"]["name"] == b["metadata"]["name"] in allowed
        assert b["subjects"] == [
            {"kind": "ServiceAccount", "name": b["metadata"]["name"], "namespace": NAMESPACE}
        ]


def test_defaults_run_mlflow_on_the_in_chart_postgresql_and_point_jobs_at_it():
    docs = rendered()
    platform = platform_of(docs)
    assert (
        platform.image == "ghcr.io/kubetrain/kubetrain:0.1.0"
    )  # the runtime image, PlatformConfig's default
    assert platform.mlflow_tracking_uri == f"http://kubetrain-mlflow.{NAMESPACE}.svc:5000"
    assert platform.mlflow_ui_url == platform.mlflow_tracking_uri
    operator = container(one(docs, "Deployment", "kubetrain-operator"), "operator")
    assert operator["image"] == "ghcr.io/kubetrain/kubetrain-control:0.1.0"

    service = one(docs, "Service", "kubetrain-mlflow")
    assert service["spec"]["ports"][0]["port"] == 5000
    mlflow = container(one(docs, "Deployment", "kubetrain-mlflow"), "mlflow")
    args = mlflow["args"]
    arg = {a: args[i + 1] for i, a in enumerate(args) if a.startswith("--") and i + 1 < len(args)}
    assert "--serve-artifacts" in args
    assert (
        arg["--backend-store-uri"]
        == f"postgresql+psycopg://mlflow:$(DB_PASSWORD)@kubetrain-postgresql.{NAMESPACE}.svc:5432/mlflow"
    )
    assert arg["--artifacts-destination"] == "/mlartifacts"
    # MLflow refuses Host headers it does not know: the Service name the jobs use must be among them
    assert f"kubetrain-mlflow.{NAMESPACE}.svc:5000" in arg["--allowed-hosts"].split(",")
    password = env_of(mlflow)["DB_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert password == {"name": "kubetrain-postgresql", "key": "password"}
    mounts = {m["mountPath"]: m["name"] for m in mlflow["volumeMounts"]}
    volumes = {
        v["name"]: v
        for v in one(docs, "Deployment", "kubetrain-mlflow")["spec"]["template"]["spec"]["volumes"]
    }
    assert (
        volumes[mounts["/mlartifacts"]]["persistentVolumeClaim"]["claimName"] == "kubetrain-mlflow-artifacts"
    )
    one(docs, "PersistentVolumeClaim", "kubetrain-mlflow-artifacts")

    postgres = one(docs, "StatefulSet", "kubetrain-postgresql")
    pg = container(postgres, "postgresql")
    assert env_of(pg)["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"] == password
    assert postgres["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "10Gi"
    secret = one(docs, "Secret", "kubetrain-postgresql")
    assert len(secret["data"]["password"]) > 20  # random, generated at install
    assert not [d for d in docs if d["apiVersion"] in THIRD_PARTY or d["metadata"]["name"] == "kubetrain-api"]
    text = notes()
    assert "kubectl -n default apply -f jobs/k8s/smollm2-lora.yaml" in text
    assert "port-forward svc/kubetrain-mlflow 5000" in text


def test_external_database_s3_artifacts_api_kueue_and_servicemonitor():
    values = load_values(CHART / "ci" / "external-values.yaml")
    docs = rendered(values)
    assert not [
        d for d in docs if "postgresql" in d["metadata"]["name"] or d["kind"] == "PersistentVolumeClaim"
    ]
    mlflow = container(one(docs, "Deployment", "kubetrain-mlflow"), "mlflow")
    args = mlflow["args"]
    arg = {a: args[i + 1] for i, a in enumerate(args) if a.startswith("--") and i + 1 < len(args)}
    assert (
        arg["--backend-store-uri"]
        == "postgresql+psycopg://mlflow_app:$(DB_PASSWORD)@postgres.databases.svc:5432/mlflow"
    )
    assert arg["--artifacts-destination"] == "s3://training/mlflow"
    assert "mlflow.example.com" in arg["--allowed-hosts"].split(",")
    env = env_of(mlflow)
    assert env["DB_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "mlflow-db", "key": "password"}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "mlflow-s3",
        "key": "AWS_SECRET_ACCESS_KEY",
    }
    assert env["MLFLOW_S3_ENDPOINT_URL"]["value"] == "http://minio.storage.svc:9000"

    platform = platform_of(docs)
    assert platform.image == "registry.example.com/kubetrain:0.2.0-cuda"
    assert platform.mlflow_ui_url == "https://mlflow.example.com"
    assert platform.storage == "s3://training/checkpoints"
    assert [s.name for s in platform.secrets] == ["s3-credentials"]
    operator = one(docs, "Deployment", "kubetrain-operator")
    assert container(operator, "operator")["image"] == "registry.example.com/kubetrain-control:0.2.0"
    assert operator["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "registry-credentials"}]
    args = container(operator, "operator")["args"]
    assert [args[i + 1] for i, a in enumerate(args) if a == "--namespace"] == ["team-a", "team-b"]

    api = one(docs, "Deployment", "kubetrain-api")
    assert container(api, "api")["image"] == "registry.example.com/kubetrain-control:0.2.0"
    assert one(docs, "Service", "kubetrain-api")["spec"]["ports"][0]["targetPort"] == "http"
    monitor = one(docs, "ServiceMonitor", "kubetrain-operator")
    operator_service = one(docs, "Service", "kubetrain-operator")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= operator_service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["endpoints"][0]["port"] == operator_service["spec"]["ports"][0]["name"]
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    queue = one(docs, "LocalQueue", "default")
    assert queue["metadata"]["namespace"] == "team-a" and queue["spec"] == {"clusterQueue": "gpus"}


def test_without_mlflow_jobs_keep_the_platform_uri():
    docs = rendered(load_values(CHART / "ci" / "no-mlflow-values.yaml"))
    assert not [d for d in docs if "mlflow" in d["metadata"]["name"] or "postgresql" in d["metadata"]["name"]]
    platform = platform_of(docs)
    assert platform.mlflow_tracking_uri == "https://mlflow.internal.example.com"
    assert platform.service_account is None


@pytest.mark.parametrize(
    "values, message",
    [
        ({"mlflow": {"enabeld": False}}, "additional properties 'enabeld' not allowed"),
        ({"platform": {"imagee": "x"}}, "additional properties 'imagee' not allowed"),
        ({"operator": {"metricsPort": "9090"}}, "/operator/metricsPort"),
        ({"storage": "gs://bucket"}, "/storage"),
        ({"platform": {"secrets": [{"name": "s3"}]}}, "at '/platform/secrets/0': missing property 'keys'"),
        ({"mlflow": {"artifacts": {"type": "gcs"}}}, "/mlflow/artifacts/type"),
        ({"mlflow": {"postgresql": {"enabled": False}}}, "mlflow.externalDatabase.host"),
        ({"mlflow": {"artifacts": {"type": "s3"}}}, "mlflow.artifacts.s3.destination"),
    ],
)  # fmt: skip
def test_bad_values_fail_naming_the_field(values, message):
    with pytest.raises(helm.HelmError) as err:
        rendered(values)
    assert message in str(err.value)


def test_the_values_schema_is_generated_from_the_platform_model():
    committed = json.loads((CHART / "values.schema.json").read_text())
    assert committed == json.loads(json.dumps(chart.values_schema(PlatformConfig.model_json_schema())))
    # every default value is described by the schema (a new value without a schema entry fails here)
    defaults = load_values(CHART / "values.yaml")
    assert set(defaults) <= set(committed["properties"])


def test_secrets_are_only_referenced():
    values = load_values(CHART / "ci" / "external-values.yaml")
    text = yaml.safe_dump_all(rendered(values))
    assert "kind: Secret\n" not in text  # an external database: the chart creates no Secret at all
    for doc in rendered():
        if doc["kind"] == "Secret":
            assert doc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_chart_ships_the_generated_crd():
    crds = helm.Chart.load(CHART).crds
    assert [c["name"] for c in crds] == ["crds/trainingjobs.kubetrain.dev.yaml"]
    crd = yaml.safe_load(crds[0]["data"])
    assert crd == yaml.safe_load((ROOT / "manifests/crd.yaml").read_text())
    kubernetes_validate.validate(crd, "1.32.0", strict=True)
