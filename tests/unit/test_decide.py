"""The operator's pure core: decide() and status_from_rayjob() over tables of observed states."""

from __future__ import annotations

import copy

import pytest

from kubetrain.control.decide import Create, Event, PatchStatus, SetSuspend, decide
from kubetrain.control.metrics import Metrics
from kubetrain.control.status import OWNED, phase_of, status_from_rayjob
from kubetrain.schema.status import TRANSITIONS, Phase, can_move
from tests.conftest import MINIMAL

NOW, LATER = "2026-01-01T00:00:00Z", "2026-01-01T01:00:00Z"


def job(status=None, generation=1, **spec):
    body = copy.deepcopy(MINIMAL)
    body["metadata"].update(namespace="ns", uid="u-1", generation=generation)
    body["spec"].update(spec)
    if status is not None:
        body["status"] = status
    return body


def rayjob(deployment="", job_status="", suspend=False, **status):
    return {"metadata": {"name": "t"}, "spec": {"suspend": suspend},
            "status": {"jobDeploymentStatus": deployment, "jobStatus": job_status, **status}}  # fmt: skip


def kinds(actions):
    return [type(a).__name__ for a in actions]


def status_of(actions):
    return next(a.status for a in actions if isinstance(a, PatchStatus))


@pytest.mark.parametrize(
    "observed, suspend, phase",
    [
        (rayjob(), False, Phase.PENDING),
        (rayjob("Initializing"), False, Phase.PENDING),
        (rayjob("Running", "RUNNING"), False, Phase.RUNNING),
        (rayjob("Complete", "SUCCEEDED"), False, Phase.SUCCEEDED),
        (rayjob("Complete", "FAILED"), False, Phase.FAILED),
        (rayjob("Complete", "STOPPED"), False, Phase.FAILED),
        (rayjob("Failed", "", reason="DeadlineExceeded", message="too slow"), False, Phase.FAILED),
        (rayjob("ValidationFailed"), False, Phase.FAILED),
        (rayjob("Suspended", suspend=True), True, Phase.SUSPENDED),
        (rayjob("Suspending", suspend=True), True, Phase.SUSPENDED),
        (rayjob("", suspend=True), True, Phase.SUSPENDED),
        (rayjob("Suspended", suspend=True), False, Phase.QUEUED),  # Kueue holds it
        (rayjob("Retrying"), False, Phase.QUEUED),
        (rayjob("Waiting"), False, Phase.QUEUED),
    ],
)
def test_phase_of_rayjob_states(observed, suspend, phase):
    assert phase_of(observed, suspend)[0] == phase


def test_failure_reason_and_message_come_from_kuberay():
    status = status_from_rayjob(job(), rayjob("Failed", reason="DeadlineExceeded", message="too slow"), NOW)
    assert (status["phase"], status["reason"], status["message"]) == (
        "Failed",
        "DeadlineExceeded",
        "too slow",
    )
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert (failed["status"], failed["reason"], failed["message"]) == ("True", "DeadlineExceeded", "too slow")


@pytest.mark.parametrize("old", list(Phase))
@pytest.mark.parametrize("new", list(Phase))
def test_transitions(old, new):
    expected = old == new or new in TRANSITIONS[old]
    assert can_move(old, new) == expected
    if old in (Phase.SUCCEEDED, Phase.FAILED):
        assert can_move(old, new) == (old == new)


def test_a_finished_job_stays_finished():
    done = status_from_rayjob(job(), rayjob("Complete", "SUCCEEDED"), NOW)
    again = status_from_rayjob(job(status=done), rayjob("Running", "RUNNING"), LATER)
    assert again["phase"] == "Succeeded" and again == {k: done.get(k) for k in OWNED}


def test_running_status_mirrors_the_rayjob():
    observed = rayjob("Running", "RUNNING", rayClusterName="t-raycluster-x", dashboardURL="t-head-svc.ns.svc:8265",
                      startTime="2026-01-01T00:00:05Z")  # fmt: skip
    status = status_from_rayjob(job(), observed, NOW, workers=2)
    assert status["rayJobName"] == "t" and status["rayClusterName"] == "t-raycluster-x"
    assert status["dashboardURL"] == "http://t-head-svc.ns.svc:8265"
    assert status["startTime"] == "2026-01-01T00:00:05Z" and status["completionTime"] is None
    assert status["observedGeneration"] == 1 and status["workers"] == 2
    conditions = {c["type"]: c for c in status["conditions"]}
    assert set(conditions) == {"Ready", "Running", "Suspended", "Succeeded", "Failed"}
    assert {t: c["status"] for t, c in conditions.items()} == {
        "Ready": "True", "Running": "True", "Suspended": "False", "Succeeded": "False", "Failed": "False"}  # fmt: skip
    assert all(set(c) == {"type", "status", "reason", "message", "lastTransitionTime", "observedGeneration"}
               for c in conditions.values())  # fmt: skip
    done = status_from_rayjob(
        job(status=status), rayjob("Complete", "SUCCEEDED", endTime="2026-01-01T02:00:00Z"), LATER
    )
    assert done["completionTime"] == "2026-01-01T02:00:00Z" and done["startTime"] == status["startTime"]


def test_last_transition_time_moves_only_when_a_condition_flips():
    first = status_from_rayjob(job(), rayjob("Running", "RUNNING"), NOW)
    second = status_from_rayjob(job(status=first), rayjob("Running", "RUNNING"), LATER)
    assert second["conditions"] == first["conditions"]
    third = status_from_rayjob(job(status=second), rayjob("Complete", "SUCCEEDED"), LATER)
    times = {c["type"]: c["lastTransitionTime"] for c in third["conditions"]}
    assert times == {"Ready": NOW, "Running": LATER, "Suspended": NOW, "Succeeded": LATER, "Failed": NOW}


def test_a_new_job_gets_its_rayjob_created_once():
    actions = decide(job(), None, NOW)
    assert kinds(actions) == ["Create", "Event", "PatchStatus"]
    configmap, created = actions[0].objects
    assert (configmap["kind"], created["kind"], created["metadata"]["name"]) == ("ConfigMap", "RayJob", "t")
    assert created["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    first = status_of(actions)
    assert (first["phase"], first["reason"], first["rayJobName"]) == ("Pending", "RayJobCreated", "t")
    assert next(c for c in first["conditions"] if c["type"] == "Ready")["status"] == "True"
    existing = decide(job(status=status_of(actions)), rayjob(), NOW)
    assert not any(isinstance(a, Create) for a in existing)


def test_nothing_changes_when_nothing_changed():
    status = status_from_rayjob(job(), rayjob("Running", "RUNNING"), NOW, workers=2)
    assert decide(job(status=status), rayjob("Running", "RUNNING"), LATER) == []


@pytest.mark.parametrize(
    "spec, path",
    [
        ({"resources": {"workers": 2, "cpus_per_worker": 1, "gpus_per_worker": 0}, "training": {"precision": "fp16"}},
         "spec"),
        ({"peft": {"type": "lora", "target_modules": 3}}, "spec.peft.target_modules"),
        ({"data": {"train": "x.jsonl", "packing": True}}, "spec.data"),
    ],
)  # fmt: skip
def test_a_spec_the_models_reject_fails_with_invalid_spec_and_nothing_is_created(spec, path):
    actions = decide(job(**spec), None, NOW)
    assert kinds(actions) == ["PatchStatus", "Event"]
    status = status_of(actions)
    assert (status["phase"], status["reason"]) == ("Failed", "InvalidSpec")
    assert status["message"].startswith(path)
    event = actions[1]
    assert (event.type, event.reason) == ("Warning", "InvalidSpec") and event.message == status["message"]
    assert next(c for c in status["conditions"] if c["type"] == "Failed")["reason"] == "InvalidSpec"
    # reported once per generation
    assert decide(job(status=status, **spec), None, LATER) == []


def test_a_finished_job_whose_rayjob_is_gone_is_not_recreated():
    done = status_from_rayjob(job(), rayjob("Complete", "SUCCEEDED"), NOW)
    assert decide(job(status=done), None, LATER) == []


@pytest.mark.parametrize(
    "suspend_spec, rayjob_suspend, deployment, expected",
    [
        (True, False, "Running", [SetSuspend("t", True)]),
        (False, True, "Suspended", [SetSuspend("t", False)]),
        (True, True, "Suspended", []),
        (True, False, "Complete", []),  # too late to suspend
    ],
)
def test_suspend_and_resume(suspend_spec, rayjob_suspend, deployment, expected):
    body = job(lifecycle={"suspend": suspend_spec})
    actions = decide(
        body, rayjob(deployment, "SUCCEEDED" if deployment == "Complete" else "", suspend=rayjob_suspend), NOW
    )
    assert [a for a in actions if isinstance(a, SetSuspend)] == expected


def test_a_queued_job_is_left_to_kueue():
    body = job(resources={"queue": "team-a"})
    actions = decide(body, rayjob("Suspended", suspend=True), NOW)
    assert not any(isinstance(a, SetSuspend) for a in actions)
    assert status_of(actions)["phase"] == "Queued"


def test_a_job_created_suspended_gets_a_suspended_rayjob():
    actions = decide(job(lifecycle={"suspend": True}), None, NOW)
    created = next(a for a in actions if isinstance(a, Create)).objects[1]
    assert created["spec"]["suspend"] is True
    assert status_of(actions)["phase"] == "Suspended"


def test_the_operator_never_writes_progress():
    progress = {"step": 5, "total_steps": 10, "percent": 50.0}
    body = job(status={"progress": progress, "metric": "loss=1", "mlflowRunId": "r"})
    for observed in (None, rayjob("Running", "RUNNING"), rayjob("Complete", "SUCCEEDED")):
        for action in decide(body, observed, NOW):
            if isinstance(action, PatchStatus):
                assert not {"progress", "metric", "mlflowRunId"} & set(action.status)


def test_terminal_transitions_emit_an_event():
    running = status_from_rayjob(job(), rayjob("Running", "RUNNING"), NOW)
    actions = decide(job(status=running), rayjob("Failed", reason="AppFailed", message="boom"), LATER)
    events = [a for a in actions if isinstance(a, Event)]
    assert events == [Event("Warning", "AppFailed", "boom")]


def test_deleting_jobs_are_left_to_garbage_collection():
    body = job()
    body["metadata"]["deletionTimestamp"] = NOW
    assert decide(body, None, NOW) == []


def test_metrics_count_jobs_by_phase():
    m = Metrics()
    m.observe_phase("ns", "a", "Running")
    m.observe_phase("ns", "b", "Running")
    m.observe_phase("ns", "b", "Succeeded")
    m.observe_phase("ns", "c", "Failed")
    m.observe_phase("ns", "c", None)

    def value(phase):
        return m.registry.get_sample_value("kubetrain_trainingjobs", {"phase": phase})

    assert (value("Running"), value("Succeeded"), value("Failed"), value("Pending")) == (1, 1, 0, 0)


@pytest.mark.parametrize(
    "observed, phase",
    [
        # KubeRay moves a failed attempt with retries left to Retrying with the old jobStatus still FAILED
        (rayjob("Retrying", "FAILED", failed=1), Phase.QUEUED),
        (rayjob("Running", "FAILED"), Phase.RUNNING),  # the same reconcile turns it into Retrying or Failed
        (rayjob("Failed", "FAILED", failed=2), Phase.FAILED),  # retries spent
    ],
)
def test_a_failed_attempt_with_retries_left_is_not_the_end(observed, phase):
    assert phase_of(observed, False)[0] == phase


@pytest.mark.parametrize(
    "observed, attempt",
    [
        (rayjob("Initializing"), 1),
        (rayjob("Running", "RUNNING", failed=1), 2),
        (rayjob("Retrying", "FAILED", failed=1), 2),
        (rayjob("Complete", "SUCCEEDED", failed=1, succeeded=1), 2),
        (rayjob("Failed", "FAILED", failed=2), 2),
        (rayjob("Complete", "SUCCEEDED", succeeded=1), 1),
    ],
)
def test_the_status_counts_attempts_from_kuberays_counters(observed, attempt):
    assert status_from_rayjob(job(), observed, NOW)["attempt"] == attempt


def finished(outcome, completed=NOW, **lifecycle):
    """A job that finished at `completed`, with its RayJob (cluster c-1) as KubeRay leaves it."""
    observed = rayjob("Complete", "SUCCEEDED") if outcome == "SUCCEEDED" else rayjob("Failed", "FAILED")
    observed["status"].update(rayClusterName="c-1", endTime=completed)
    body = job(
        lifecycle={**lifecycle, "ttl_seconds_after_success": 10**6, "ttl_seconds_after_failure": 10**6}
    )
    body["status"] = status_of(decide(body, observed, completed))  # as the operator recorded the finish
    body["spec"]["lifecycle"] = lifecycle
    return body, observed


DELETE = ["DeleteCluster", "PatchStatus", "Event"]


@pytest.mark.parametrize(
    "outcome, lifecycle, now, expected, wait",
    [
        ("SUCCEEDED", {"ttl_seconds_after_success": 600}, NOW, ["Requeue"], 600),
        ("SUCCEEDED", {"ttl_seconds_after_success": 600}, "2026-01-01T00:09:00Z", ["Requeue"], 60),
        ("SUCCEEDED", {"ttl_seconds_after_success": 600}, "2026-01-01T00:10:00Z", DELETE, None),
        ("SUCCEEDED", {"ttl_seconds_after_success": 0}, NOW, DELETE, None),
        ("FAILED", {"ttl_seconds_after_success": 0, "ttl_seconds_after_failure": 3600}, "2026-01-01T00:10:00Z", ["Requeue"], 3000),
        ("FAILED", {"ttl_seconds_after_failure": 3600}, LATER, DELETE, None),
    ],
)  # fmt: skip
def test_the_cluster_goes_when_its_outcomes_ttl_has_passed(outcome, lifecycle, now, expected, wait):
    body, observed = finished(outcome, **lifecycle)
    actions = decide(body, observed, now)
    assert kinds(actions) == expected
    if wait is not None:
        assert actions[0].seconds == wait
    else:
        assert actions[0].name == "c-1"
        assert status_of(actions) == {"clusterDeletionTime": now}


def test_a_deleted_cluster_is_not_deleted_again_and_an_unknown_one_is_left_alone():
    body, observed = finished("SUCCEEDED", ttl_seconds_after_success=0)
    body["status"]["clusterDeletionTime"] = NOW
    assert decide(body, observed, LATER) == []
    body, observed = finished("SUCCEEDED", ttl_seconds_after_success=0)
    observed["status"].pop("rayClusterName")
    assert decide(body, observed, LATER) == []


def test_a_rayjob_owned_by_another_trainingjob_is_a_name_conflict_not_adopted():
    observed = rayjob("Running", "RUNNING")
    observed["metadata"]["ownerReferences"] = [
        {"kind": "TrainingJob", "name": "other", "uid": "u-2", "controller": True}
    ]
    actions = decide(job(), observed, NOW)
    assert kinds(actions) == ["PatchStatus", "Event"]
    status = status_of(actions)
    assert (status["phase"], status["reason"]) == ("Failed", "RayJobNameTaken") and "other" in status[
        "message"
    ]
    assert decide(job(status=status), observed, LATER) == []  # said once
    observed["metadata"]["ownerReferences"][0]["uid"] = "u-1"
    assert (
        "Create" not in kinds(decide(job(), observed, NOW))
        and status_of(decide(job(), observed, NOW))["phase"] == "Running"
    )
