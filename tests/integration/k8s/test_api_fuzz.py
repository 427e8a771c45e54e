"""Property-based fuzzing of the served OpenAPI (schemathesis): no input a client sends makes the API answer 5xx.

Bounded for `make test`: KUBETRAIN_FUZZ_EXAMPLES (default 20) examples per operation and generation mode
(positive: schema-valid requests; negative: schema-violating ones); set it higher for a longer run.
"""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

EXAMPLES = int(os.environ.get("KUBETRAIN_FUZZ_EXAMPLES", "20"))
TOKEN = "tok-fuzzer-a81f"


@pytest.fixture(scope="module")
def operations(api_server, emulator):
    emulator.add_user(TOKEN, "fuzzer")
    emulator.allow("fuzzer", "*", ("*",), ("*",))
    schema = schemathesis.openapi.from_url(api_server.url + "/openapi.json")
    return {op.ok().label: op.ok() for op in schema.get_all_operations()}


LABELS = [
    f"{method} /apis/kubetrain.dev/v1alpha1/namespaces/{{namespace}}/trainingjobs{suffix}"
    for method, suffix in [
        ("POST", ""),
        ("GET", ""),
        ("GET", "/{name}"),
        ("GET", "/{name}/status"),
        ("PATCH", "/{name}"),
        ("DELETE", "/{name}"),
        ("GET", "/{name}/logs"),
    ]  # fmt: skip
]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
@pytest.mark.parametrize("label", LABELS)
def test_no_server_errors(operations, api_server, label, mode):
    assert sorted(operations) == sorted(LABELS), "the served operations changed: update LABELS"
    sent, codes = [], set()

    def send(case):
        response = case.call(
            base_url=api_server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
        )
        sent.append(response.status_code)
        codes.add(response.status_code)
        assert response.status_code < 500, (
            f"{case.as_curl_command()}\n-> {response.status_code} {response.text[:500]}"
        )

    def run(strategy, examples: int) -> None:
        options = settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                           suppress_health_check=list(HealthCheck))  # fmt: skip
        options(given(case=strategy)(send))()

    run(operations[label].as_strategy(generation_mode=mode), EXAMPLES)
    if (
        label.startswith("POST") and mode == GenerationMode.POSITIVE
    ):  # the documented example: created, then a conflict
        examples = operations[label].schema.get_strategies_from_examples(operations[label])
        assert examples, "the create operation documents an example body"
        run(examples[0], 1)
        run(examples[0], 1)  # the same name again
        assert {201, 409} <= codes, codes
    assert len(sent) >= min(EXAMPLES, 5), f"only {len(sent)} requests were generated"
    print(f"{label} [{mode.value}]: {len(sent)} requests, statuses {sorted(codes)}")
