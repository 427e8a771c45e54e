"""The shared spec parser against hostile documents: a clear one-line problem, fast, for the CLI and the API alike."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kubetrain.spec import SpecError, load_job, parse_yaml
from kubetrain.spec.load import MAX_BYTES, MAX_DEPTH, MAX_NODES, MAX_SCALAR, parse_json

LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
    for p, c in zip("abcdefgh", "bcdefghi")
)


@pytest.mark.parametrize(
    "text,message,line",
    [
        (LAUGHS, f"the document expands to more than {MAX_NODES} values (aliases)", 1),
        ("a: &a [*a]\n", "expands to more than", 1),  # a recursive alias
        (
            "x:\n"
            + "".join("  " * i + "- \n" for i in range(1, 3))
            + "a: "
            + "[" * (MAX_DEPTH + 5)
            + "]" * (MAX_DEPTH + 5),
            f"nested deeper than {MAX_DEPTH} levels",
            4,
        ),
        ("spec:\n  model: {}\n  model: {}\n", "duplicate key 'model' (first at line 2)", 3),
        ("a: " + "x" * (MAX_SCALAR + 1), f"a value of {MAX_SCALAR + 1} characters (at most {MAX_SCALAR})", 1),
        ("a: " + "9" * 5000, "YAML value error", None),
        ("a: 1\n" * (MAX_BYTES // 5 + 1), f"at most {MAX_BYTES} are accepted", None),
    ],
    ids=[
        "billion-laughs",
        "recursive-alias",
        "deep",
        "duplicate-key",
        "huge-string",
        "huge-int",
        "too-large",
    ],
)
def test_hostile_yaml_is_one_clear_problem(text, message, line):
    with pytest.raises(SpecError) as e:
        parse_yaml(text, "f.yaml")
    (problem,) = e.value.problems
    assert message in problem.message
    if line is not None:
        assert problem.line == line


def test_ordinary_anchors_and_merge_keys_still_work():
    data, _ = parse_yaml("base: &b {x: 1, y: 2}\nuse:\n  <<: *b\n  y: 3\nlist: [*b, *b]\n")
    assert data["use"] == {"x": 1, "y": 3} and data["list"] == [{"x": 1, "y": 2}] * 2


@pytest.mark.parametrize(
    "text,message",
    [
        ('{"a": 1, "a": 2}', "duplicate key 'a'"),
        ('{"a": ' * (MAX_DEPTH + 1) + "1" + "}" * (MAX_DEPTH + 1), "nested deeper than"),
        ("[" * 100_000 + "]" * 100_000, "nested deeper than"),  # Python's recursion limit would break first
        ('{"a": "' + "x" * (MAX_SCALAR + 1) + '"}', "a value of"),
        ('{"a": ' + "9" * 5000 + "}", "a number of 5000 digits"),
        ('{"a": ', "JSON syntax error"),
    ],
    ids=["duplicate", "deep", "very-deep", "huge-string", "huge-int", "syntax"],
)
def test_hostile_json_is_one_clear_problem(text, message):
    with pytest.raises(SpecError) as e:
        parse_json(text)
    assert message in e.value.problems[0].message


def test_load_job_json_and_yaml_agree(minimal):
    import json

    assert load_job(json.dumps(minimal), json_only=True) == load_job(json.dumps(minimal))


@pytest.mark.parametrize("verb", ["validate", "run"])
def test_cli_validate_and_run_share_the_protection(tmp_path, verb):
    (tmp_path / "bomb.yaml").write_text(LAUGHS)
    r = subprocess.run([sys.executable, "-m", "kubetrain.cli.main", verb, "bomb.yaml"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 1
    assert r.stderr.strip() == f"bomb.yaml:1: the document expands to more than {MAX_NODES} values (aliases)"


@pytest.mark.parametrize("key", ["none", "str", "int", "float", "bool"])
def test_keys_named_like_pydantic_type_tags_are_reported_not_crashed_on(minimal, key):
    """Found by the API fuzzer: a key 'none' was taken for a union member's tag and the message builder crashed."""
    import yaml

    top = {**minimal, key: 1}
    with pytest.raises(SpecError) as e:
        load_job(yaml.safe_dump(top))
    assert [(p.path, p.message.split(";")[0]) for p in e.value.problems] == [(key, "unknown field")]
    nested = {**minimal, "spec": {**minimal["spec"], key: 1}}
    with pytest.raises(SpecError) as e:
        load_job(yaml.safe_dump(nested))
    assert [p.path for p in e.value.problems] == [f"spec.{key}"]
