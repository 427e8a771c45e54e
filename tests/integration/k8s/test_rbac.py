"""RBAC: every (verb, resource) the operator and the runtime used is granted by manifests/, and nothing more."""

from __future__ import annotations

import yaml
from harness import RC, RJ, TJ, eventually, trainingjob

from kubetrain.runtime.run.status_reporter import KubeStatusReporter
from tests.conftest import ROOT

NS = "rbac"


def granted(role_name: str) -> set[tuple[str, str, str]]:
    docs = list(yaml.safe_load_all((ROOT / "manifests/rbac.yaml").read_text()))
    role = next(d for d in docs if d["kind"] == "ClusterRole" and d["metadata"]["name"] == role_name)
    out = set()
    for rule in role["rules"]:
        assert "*" not in rule["apiGroups"] + rule["resources"] + rule["verbs"], f"wildcard in {rule}"
        assert not rule.get("resourceNames") and not rule.get("nonResourceURLs")
        out |= {(g, r, v) for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    return out


def used(log, agents: tuple[str, ...]) -> set[tuple[str, str, str]]:
    out = set()
    for verb, key, sub, agent in log:
        if not agent.startswith(agents):
            continue
        parts = key.split("/")
        group, plural = ("" if len(parts) == 2 else parts[0]), parts[-1]
        out.add((group, f"{plural}/{sub}" if sub else plural, verb))
    return out


def test_operator_and_runtime_use_exactly_what_rbac_grants(api, emulator, start_operator):
    start = len(emulator.request_log())
    start_operator(NS)
    api.create(TJ, NS, trainingjob("rbac", NS))
    eventually(lambda: api.get(RJ, NS, "rbac"))
    api.play_kuberay(NS, "rbac", jobDeploymentStatus="Running", jobStatus="RUNNING")
    eventually(lambda: (api.get(TJ, NS, "rbac").get("status") or {}).get("phase") == "Running")
    KubeStatusReporter(str(api.http.base_url), NS, "rbac", min_interval=0).report(
        {"step": 1, "total_steps": 2}
    )
    api.patch(TJ, NS, "rbac", {"spec": {"lifecycle": {"suspend": True}}})
    eventually(lambda: api.get(RJ, NS, "rbac")["spec"]["suspend"] is True)
    bad = trainingjob("rbac-invalid", NS)
    bad["spec"]["peft"]["target_modules"] = 7
    api.create(TJ, NS, bad)
    eventually(lambda: (api.get(TJ, NS, "rbac-invalid").get("status") or {}).get("reason") == "InvalidSpec")
    done = trainingjob("rbac-done", NS)
    done["spec"]["lifecycle"]["ttl_seconds_after_success"] = 0
    api.create(TJ, NS, done)
    eventually(lambda: api.get(RJ, NS, "rbac-done"))
    api.create(
        RC, NS, {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": "rbac-done-x1y2z"}}
    )
    api.play_kuberay(NS, "rbac-done", jobDeploymentStatus="Complete", jobStatus="SUCCEEDED",
                     rayClusterName="rbac-done-x1y2z")  # fmt: skip
    eventually(lambda: api.get(RC, NS, "rbac-done-x1y2z") is None)  # clean-up by outcome: TTL 0
    log = emulator.request_log()[start:]

    operator = used(log, ("kopf/", "kubetrain-operator/"))
    assert operator == granted("kubetrain-operator"), "RBAC must grant exactly what the operator uses"
    runtime = used(log, ("Python-urllib/",))
    assert runtime == granted("kubetrain-runtime") == {("kubetrain.dev", "trainingjobs/status", "patch")}
