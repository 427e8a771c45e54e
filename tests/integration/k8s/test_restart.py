"""Exactly one RayJob per TrainingJob: across an operator killed mid-reconcile, two operators racing, API errors."""

from __future__ import annotations

from harness import RJ, TJ, eventually, trainingjob


def errors_of(op) -> float:
    line = next(x for x in op.metrics().splitlines() if x.startswith("kubetrain_reconcile_errors_total"))
    return float(line.split()[1])


def test_an_operator_killed_mid_reconcile_leaves_one_rayjob(api, emulator, start_operator):
    ns = "restart"
    first = start_operator(ns)
    emulator.hold_creates(RJ)  # the RayJob is stored, but the operator never hears back
    try:
        api.create(TJ, ns, trainingjob("survivor", ns))
        eventually(lambda: api.get(RJ, ns, "survivor"))
        first.kill()  # SIGKILL while its create call is in flight: no status written yet
    finally:
        emulator.release()
    assert (api.get(TJ, ns, "survivor").get("status") or {}).get("rayJobName") is None
    second = start_operator(ns)
    eventually(lambda: (api.get(TJ, ns, "survivor").get("status") or {}).get("rayJobName") == "survivor")
    assert [r["metadata"]["name"] for r in api.list(RJ, ns)] == ["survivor"]
    assert [c["metadata"]["name"] for c in api.list("v1/configmaps", ns)] == ["survivor-spec"]
    assert errors_of(second) == 0


def test_two_operators_racing_create_each_rayjob_once(api, emulator, start_operator):
    ns = "race"
    operators = [start_operator(ns), start_operator(ns)]
    names = [f"race-{i}" for i in range(12)]
    for name in names:
        api.create(TJ, ns, trainingjob(name, ns))

    def all_created():
        return all((api.get(TJ, ns, n).get("status") or {}).get("rayJobName") for n in names)

    eventually(all_created)
    assert sorted(r["metadata"]["name"] for r in api.list(RJ, ns)) == sorted(names)
    assert sorted(c["metadata"]["name"] for c in api.list("v1/configmaps", ns)) == sorted(
        f"{n}-spec" for n in names
    )
    assert [errors_of(op) for op in operators] == [0, 0]  # a lost race (409) is not an error


def test_a_failed_reconcile_is_retried(api, emulator, start_operator):
    ns = "flaky"
    op = start_operator(ns)
    emulator.fail_creates(RJ, 2)  # the API refuses the first two RayJob creates
    api.create(TJ, ns, trainingjob("flaky", ns))
    eventually(lambda: (api.get(TJ, ns, "flaky").get("status") or {}).get("rayJobName") == "flaky")
    assert [r["metadata"]["name"] for r in api.list(RJ, ns)] == ["flaky"]
    assert errors_of(op) == 2
