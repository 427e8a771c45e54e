"""The REST API over real HTTP (uvicorn) against the emulator: TokenReview + SubjectAccessReview decide who may
do what; 401/403/404/409/413/415/422 for client mistakes, with `kubetrain validate`'s field paths."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest
import yaml
from harness import TJ, trainingjob

from kubetrain.spec import TrainingJob

ROOT_PATH = "/apis/kubetrain.dev/v1alpha1/namespaces/{ns}/trainingjobs"
TOKENS = {
    "alice": "tok-alice-3f9a",
    "bob": "tok-bob-77c1",
    "viewer": "tok-viewer-0b2e",
    "carol": "tok-carol-c4d2",
}


@pytest.fixture(scope="module")
def users(emulator):
    """alice: team-a (all verbs); bob: team-b; viewer: read-only in team-a."""
    emulator.add_user(TOKENS["alice"], "alice", ("team-a",))
    emulator.add_user(TOKENS["bob"], "bob", ("team-b",))
    emulator.add_user(TOKENS["viewer"], "viewer")
    every = ("create", "get", "list", "watch", "patch", "delete")
    for team in ("team-a", "team-b"):
        emulator.allow(
            f"group:{team}", team, every, ("trainingjobs", "trainingjobs/status", "trainingjobs/logs")
        )
    emulator.allow("viewer", "team-a", ("get", "list"), ("trainingjobs", "trainingjobs/status"))
    emulator.add_user(TOKENS["carol"], "carol")  # may read and delete one job by name (RBAC resourceNames)
    emulator.allow("carol", "team-a", ("get", "delete"), ("trainingjobs",), names=("seed",))
    return TOKENS


def call(server, method: str, ns: str, name: str = "", user: str | None = None, **kw) -> httpx.Response:
    headers = {**kw.pop("headers", {}), **({"Authorization": f"Bearer {TOKENS[user]}"} if user else {})}
    path = ROOT_PATH.format(ns=ns) + (f"/{name}" if name else "")
    return httpx.request(method, server.url + path, headers=headers, timeout=30, **kw)


def job_body(name: str, ns: str) -> dict:
    return trainingjob(name, ns, path="jobs/k8s/smollm2-lora.yaml")


@pytest.fixture(scope="module")
def seeded(api_server, users, emulator):
    """One job in each team's namespace, created through the API by its team."""
    for user, ns in (("alice", "team-a"), ("bob", "team-b")):
        r = call(api_server, "POST", ns, user=user, json=job_body("seed", ns))
        assert r.status_code == 201, r.text
    return api_server


# (user, method, namespace, name, expected status): team A cannot read, create in or delete from team B's namespace
TABLE = [
    (None, "GET", "team-a", "seed", 401),
    (None, "POST", "team-a", "", 401),
    ("alice", "GET", "team-a", "seed", 200),
    ("alice", "GET", "team-a", "", 200),
    ("alice", "GET", "team-b", "seed", 403),
    ("alice", "GET", "team-b", "", 403),
    ("alice", "POST", "team-b", "", 403),
    ("alice", "DELETE", "team-b", "seed", 403),
    ("alice", "PATCH", "team-b", "seed", 403),
    ("bob", "GET", "team-a", "seed", 403),
    ("bob", "GET", "team-b", "seed", 200),
    ("viewer", "GET", "team-a", "seed", 200),
    ("viewer", "GET", "team-a", "", 200),
    ("viewer", "POST", "team-a", "", 403),
    ("viewer", "DELETE", "team-a", "seed", 403),
    ("viewer", "GET", "team-b", "", 403),
    ("carol", "GET", "team-a", "seed", 200),
    ("carol", "GET", "team-a", "other", 403),
    ("carol", "GET", "team-a", "", 403),
    ("carol", "GET", "team-b", "seed", 403),
]


@pytest.mark.parametrize("user,method,ns,name,expected", TABLE)
def test_authorization_table(seeded, emulator, user, method, ns, name, expected):
    kw = {}
    if method == "POST":
        kw["json"] = job_body("table-new", ns)
    if method == "PATCH":
        kw.update(content=b'{"spec": {"lifecycle": {"suspend": true}}}',
                  headers={"Content-Type": "application/merge-patch+json"})  # fmt: skip
    r = call(seeded, method, ns, name, user, **kw)
    assert r.status_code == expected, r.text
    assert r.headers["content-type"].startswith("application/json")
    if expected >= 400:
        assert r.json()["kind"] == "Status" and r.json()["code"] == expected
    assert [o["metadata"]["name"] for o in emulator.objects(TJ) if o["metadata"]["name"] == "table-new"] == []


def test_a_wrong_token_is_refused(seeded):
    r = httpx.get(
        seeded.url + ROOT_PATH.format(ns="team-a"), headers={"Authorization": "Bearer nope"}, timeout=30
    )
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"


def test_create_writes_one_trainingjob_with_its_creator(seeded, emulator):
    r = call(seeded, "POST", "team-a", user="alice", json=job_body("by-alice", "team-a"))
    assert r.status_code == 201, r.text
    stored = next(o for o in emulator.objects(TJ) if o["metadata"]["name"] == "by-alice")
    assert stored["metadata"]["namespace"] == "team-a"
    assert stored["metadata"]["annotations"]["kubetrain.dev/created-by"] == "alice"
    assert r.json()["metadata"]["uid"] == stored["metadata"]["uid"]
    assert (
        call(seeded, "POST", "team-a", user="alice", json=job_body("by-alice", "team-a")).status_code == 409
    )
    assert call(seeded, "GET", "team-a", "by-alice", user="alice").json()["spec"]["model"]["name_or_path"]
    r = call(seeded, "DELETE", "team-a", "by-alice", user="alice")
    assert r.status_code == 200 and r.json()["status"] == "Success"
    assert call(seeded, "GET", "team-a", "by-alice", user="alice").status_code == 404
    assert call(seeded, "DELETE", "team-a", "by-alice", user="alice").status_code == 404


def test_list_filters_by_label(seeded):
    body = job_body("labelled", "team-a")
    body["metadata"]["labels"] = {"team": "nlp", "stage": "dev"}
    assert call(seeded, "POST", "team-a", user="alice", json=body).status_code == 201
    r = call(seeded, "GET", "team-a", user="alice", params={"labelSelector": "stage=dev"})
    assert [o["metadata"]["name"] for o in r.json()["items"]] == ["labelled"]
    r = call(seeded, "GET", "team-a", user="alice", params={"labelSelector": "stage in (dev)"})
    assert r.status_code == 422 and r.json()["details"]["causes"][0]["field"] == "labelSelector"


BAD_YAML = """apiVersion: kubetrain.dev/v1alpha1
kind: TrainingJob
metadata: {name: bad}
spec:
  model: {name_or_path: a/b}
  data: {train: x}
  training: {learning_rate: -1, bogus: 1}
"""


def test_invalid_spec_is_422_with_the_same_problems_as_kubetrain_validate(seeded, tmp_path):
    r = call(
        seeded, "POST", "team-a", user="alice", content=BAD_YAML, headers={"Content-Type": "application/yaml"}
    )
    assert r.status_code == 422, r.text
    causes = r.json()["details"]["causes"]
    got = [f"f.yaml:{c['line']}: {c['field']}: {c['message']}" for c in causes]
    (tmp_path / "f.yaml").write_text(BAD_YAML)
    cli = subprocess.run([sys.executable, "-m", "kubetrain.cli.main", "validate", "f.yaml"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert cli.returncode == 1
    assert got == cli.stderr.splitlines()
    assert any("spec.training.learning_rate: got -1: Input should be greater than 0" in g for g in got)
    as_json = yaml.safe_load(BAD_YAML)
    r = call(seeded, "POST", "team-a", user="alice", json=as_json)
    assert [(c["field"], c["message"]) for c in r.json()["details"]["causes"]] == [
        (c["field"], c["message"]) for c in causes
    ]


@pytest.mark.parametrize(
    "body,ctype,code,words",
    [
        (
            "a: &a [x, x, x, x, x, x, x, x, x]\n"
            + "".join(
                f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
                for p, c in zip("abcdefgh", "bcdefghi")
            ),
            "application/yaml",
            422,
            "expands to more than",
        ),
        ("a: " + "[" * 200 + "]" * 200, "application/yaml", 422, "nested deeper than"),
        ('{"a": ' * 200 + "1" + "}" * 200, "application/json", 422, "nested deeper than"),
        ("a: 1\na: 2\n", "application/yaml", 422, "duplicate key 'a'"),
        ('{"kind": "TrainingJob", "kind": "x"}', "application/json", 422, "duplicate key 'kind'"),
        ("a: " + "x" * 100_000 + "\n", "application/yaml", 422, "a value of 100000 characters"),
        ("a: " + "9" * 5000 + "\n", "application/yaml", 422, "YAML value error"),
        ("x" * (2 << 20), "application/yaml", 413, "larger than"),
        ("a: 1", "text/html", 415, "Content-Type"),
        (b"\xff\xfe", "application/yaml", 422, "not UTF-8"),
        ("[", "application/json", 422, "JSON syntax error"),
        ("- 1\n", "application/yaml", 422, "expected a mapping"),
    ],
    ids=[
        "alias-bomb",
        "deep-yaml",
        "deep-json",
        "dup-yaml",
        "dup-json",
        "huge-scalar",
        "huge-int",
        "too-large",
        "media-type",
        "not-utf8",
        "bad-json",
        "not-a-mapping",
    ],  # fmt: skip
)
def test_hostile_bodies_are_a_clear_4xx(seeded, body, ctype, code, words):
    r = call(seeded, "POST", "team-a", user="alice", content=body, headers={"Content-Type": ctype})
    assert r.status_code == code, r.text[:500]
    assert words in r.text


def test_namespace_in_the_body_must_match_the_path(seeded):
    r = call(seeded, "POST", "team-a", user="alice", json=job_body("elsewhere", "team-b"))
    assert r.status_code == 422 and r.json()["details"]["causes"][0]["field"] == "metadata.namespace"


def test_patch_suspends_and_only_suspend(seeded, emulator):
    merge = {"Content-Type": "application/merge-patch+json"}
    r = call(
        seeded,
        "PATCH",
        "team-a",
        "seed",
        "alice",
        content=b'{"spec": {"lifecycle": {"suspend": true}}}',
        headers=merge,
    )
    assert r.status_code == 200 and r.json()["spec"]["lifecycle"]["suspend"] is True
    r = call(
        seeded,
        "PATCH",
        "team-a",
        "seed",
        "alice",
        content=b'{"spec": {"training": {"max_steps": 1}}}',
        headers=merge,
    )
    assert r.status_code == 422 and r.json()["details"]["causes"][0]["field"] == "spec.lifecycle.suspend"
    r = call(
        seeded,
        "PATCH",
        "team-a",
        "seed",
        "alice",
        content=b'{"spec": {"lifecycle": {"suspend": false}}}',
        headers=merge,
    )
    assert r.json()["spec"]["lifecycle"]["suspend"] is False


def test_status_subresource_and_logs(seeded, api):
    api.patch(TJ, "team-a", "seed", {"status": {"phase": "Running"}}, sub="status")
    r = call(seeded, "GET", "team-a", "seed/status", user="alice")
    assert r.status_code == 200 and r.json()["status"]["phase"] == "Running"
    r = call(seeded, "GET", "team-a", "seed/logs", user="alice")
    assert r.status_code == 404 and "no RayJob yet" in r.json()["message"]
    assert call(seeded, "GET", "team-a", "seed/logs", user="viewer").status_code == 403


def test_health_metrics_openapi_and_no_secrets_in_the_log(seeded):
    assert httpx.get(seeded.url + "/healthz").text == "ok"
    metrics = httpx.get(seeded.url + "/metrics").text
    assert 'kubetrain_api_requests_total{code="403"' in metrics
    doc = httpx.get(seeded.url + "/openapi.json").json()
    assert (
        doc["components"]["schemas"]["TrainingJob"]["required"] == TrainingJob.model_json_schema()["required"]
    )
    assert "/apis/kubetrain.dev/v1alpha1/namespaces/{namespace}/trainingjobs/{name}/status" in doc["paths"]
    log = seeded.log.read_text()
    assert "POST /apis/kubetrain.dev/v1alpha1/namespaces/team-a/trainingjobs" in log
    for token in TOKENS.values():
        assert token not in log
