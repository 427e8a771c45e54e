"""spec.sweep: good sweeps validate; bad ones are rejected naming the parameter path, the value and what is allowed."""

from __future__ import annotations

import copy

import pytest
import yaml

from kubetrain.spec import SpecError, load_job, validate_job
from tests.conftest import MINIMAL, ROOT

LR = {"type": "loguniform", "low": 1e-4, "high": 1e-2}


def sweep_job(sweep: dict, **spec) -> dict:
    data = copy.deepcopy(MINIMAL)
    data["spec"].update(spec)
    data["spec"]["sweep"] = sweep
    return data


GOOD = [
    (
        "loguniform lr + lora rank alias",
        {
            "parameters": {
                "training.learning_rate": LR,
                "peft.lora.r": {"type": "choice", "values": [4, 8, 16]},
            }
        },
    ),
    (
        "every distribution",
        {
            "algorithm": "random",
            "parameters": {
                "training.warmup_ratio": {"type": "uniform", "low": 0.0, "high": 0.2},
                "training.learning_rate": LR,
                "peft.r": {"type": "int", "low": 2, "high": 16, "log": True},
                "training.schedule": {"type": "choice", "values": ["linear", "cosine"]},
                "training.batch_size": {"type": "grid", "values": [4, 8]},
            },
        },
    ),
    ("grid", {"algorithm": "grid", "parameters": {"peft.alpha": {"type": "grid", "values": [8, 16]}}}),
    (
        "asha + hyperopt",
        {
            "algorithm": "hyperopt",
            "scheduler": "asha",
            "trials": 4,
            "max_concurrent": 2,
            "grace_period": 2,
            "reduction_factor": 2,
            "parameters": {"training.learning_rate": LR},
        },
    ),
    (
        "median + budgets",
        {
            "scheduler": "median",
            "max_failed_trials": 2,
            "time_budget_s": 600,
            "seed": 3,
            "parameters": {"training.weight_decay": {"type": "uniform", "low": 0, "high": 0.1}},
        },
    ),
    (
        "two objectives",
        {
            "metric": "eval_loss",
            "second_objective": {"metric": "eval_token_accuracy", "mode": "max"},
            "parameters": {"training.learning_rate": LR},
        },
    ),
    (
        "a field that is null by default",
        {"parameters": {"training.warmup_steps": {"type": "int", "low": 0, "high": 4}}},
    ),
]


@pytest.mark.parametrize("sweep", [g[1] for g in GOOD], ids=[g[0] for g in GOOD])
def test_good_sweeps_validate(sweep):
    job = validate_job(sweep_job(sweep))
    assert job.spec.sweep.parameters


def test_defaults():
    s = validate_job(sweep_job({"parameters": {"training.learning_rate": LR}})).spec.sweep
    assert (s.algorithm, s.scheduler, s.num_trials, s.max_concurrent, s.metric, s.mode) == (
        "tpe",
        "fifo",
        8,
        2,
        "eval_loss",
        "min",
    )
    grid = validate_job(
        sweep_job({"algorithm": "grid", "parameters": {"peft.r": {"type": "grid", "values": [2]}}})
    )
    assert grid.spec.sweep.num_trials == 1  # one pass over the grid


BAD = [
    # (sweep, extra spec, expected problem path, a fragment of the message)
    (
        {"parameters": {"training.learnin_rate": LR}},
        {},
        "spec.sweep.parameters.training.learnin_rate",
        "did you mean 'training.learning_rate'",
    ),
    (
        {"parameters": {"training.nothing.here": LR}},
        {},
        "spec.sweep.parameters.training.nothing.here",
        "is not a field of this spec",
    ),
    ({"parameters": {"training": LR}}, {}, "spec.sweep.parameters.training", "is a section, not a field"),
    (
        {"parameters": {"training.learning_rate": {"type": "loguniform", "low": 1e-4, "high": 2.0}}},
        {},
        "spec.sweep.parameters.training.learning_rate",
        "less than or equal to 1",
    ),
    (
        {"parameters": {"peft.lora.r": {"type": "choice", "values": [8, 0]}}},
        {},
        "spec.sweep.parameters.peft.lora.r",
        "greater than or equal to 1",
    ),
    (
        {"parameters": {"training.schedule": {"type": "choice", "values": ["cosine", "cosin"]}}},
        {},
        "spec.sweep.parameters.training.schedule",
        "'constant', 'linear' or 'cosine'",
    ),
    (
        {"parameters": {"peft.r": {"type": "choice", "values": [4]}}},
        {"peft": {"type": "none"}},
        "spec.sweep.parameters.peft.r",
        "is not a field of this spec",
    ),
    (
        {"parameters": {"training.early_stopping.patience": {"type": "int", "low": 1, "high": 3}}},
        {},
        "spec.sweep.parameters.training.early_stopping.patience",
        "is not a field of this spec",
    ),
    (
        {"parameters": {"resources.workers": {"type": "int", "low": 1, "high": 2}}},
        {},
        "spec.sweep.parameters.resources.workers",
        "'resources' cannot be swept",
    ),
    (
        {"parameters": {"training.learning_rate": {"type": "loguniform", "low": 0, "high": 0.1}}},
        {},
        "spec.sweep.parameters.training.learning_rate",
        "loguniform needs low > 0",
    ),
    (
        {"parameters": {"training.learning_rate": {"type": "uniform", "low": 0.1, "high": 0.01}}},
        {},
        "spec.sweep.parameters.training.learning_rate",
        "must be below high",
    ),
    (
        {"parameters": {"training.learning_rate": {"type": "normal", "low": 0.1, "high": 0.01}}},
        {},
        "spec.sweep.parameters.training.learning_rate",
        "'uniform', 'loguniform', 'int', 'choice', 'grid'",
    ),
    ({"parameters": {}}, {}, "spec.sweep.parameters", "at least 1 item"),
    (
        {"algorithm": "smac", "parameters": {"training.learning_rate": LR}},
        {},
        "spec.sweep.algorithm",
        "'random', 'grid', 'tpe', 'hyperopt' or 'bohb'",
    ),
    (
        {"scheduler": "pb2", "parameters": {"training.learning_rate": LR}},
        {},
        "spec.sweep.scheduler",
        "'fifo', 'asha', 'hyperband', 'median' or 'pbt'",
    ),
    (
        {"algorithm": "grid", "parameters": {"training.learning_rate": LR}},
        {},
        "spec.sweep",
        "every parameter to be type grid",
    ),
    (
        {"algorithm": "grid", "trials": 3, "parameters": {"peft.r": {"type": "grid", "values": [2, 4]}}},
        {},
        "spec.sweep",
        "leave trials unset",
    ),
    (
        {"parameters": {"peft.r": {"type": "grid", "values": [2, 4]}}},
        {},
        "spec.sweep",
        "use type choice with tpe",
    ),
    (
        {"metric": "eval_exact_match", "parameters": {"training.learning_rate": LR}},
        {},
        "spec.sweep.metric",
        "allowed: eval_loss, eval_perplexity, eval_token_accuracy",
    ),
    (
        {"metric": "eval_f1", "parameters": {"training.learning_rate": LR}},
        {},
        "spec.sweep.metric",
        "not a metric every evaluation of causal_lm reports",
    ),
    (
        {
            "second_objective": {"metric": "eval_token_accuracy", "mode": "max"},
            "scheduler": "asha",
            "parameters": {"training.learning_rate": LR},
        },
        {},
        "spec.sweep",
        "algorithm tpe",
    ),
    (
        {"trials": 0, "parameters": {"training.learning_rate": LR}},
        {},
        "spec.sweep.trials",
        "greater than or equal",
    ),
    (
        {"parameters": {"training.learning_rate": LR}},
        {"data": {"train": "t.jsonl", "validation_split": 0}},
        "spec",
        "sweep needs validation data",
    ),
]


@pytest.mark.parametrize("sweep,spec,path,fragment", BAD, ids=[b[2] + ":" + b[3][:24] for b in BAD])
def test_bad_sweeps_name_the_path(sweep, spec, path, fragment):
    with pytest.raises(SpecError) as info:
        validate_job(sweep_job(sweep, **spec))
    problems = info.value.problems
    assert any(p.path == path and fragment in p.message for p in problems), [p.render() for p in problems]


EVALUATED = {"training": {"max_steps": 12, "eval_every": 3}}
PBT = {"algorithm": "random", "scheduler": "pbt", "trials": 4, "max_concurrent": 4}
BOHB = {"algorithm": "bohb", "scheduler": "hyperband", "trials": 4}

EXCHANGING_GOOD = [
    # (sweep, extra spec): pbt and bohb restart trials from checkpoints of evaluations
    ({**PBT, "parameters": {"training.learning_rate": LR}}, EVALUATED),
    (
        {
            **PBT,
            "algorithm": "grid",
            "trials": None,
            "perturbation_interval": 1,
            "quantile_fraction": 0.5,
            "parameters": {
                "training.learning_rate": {"type": "grid", "values": [1e-4, 1e-3]},
                "training.seed": {"type": "grid", "values": [1, 2]},  # drawn once, copied with a checkpoint
            },
        },
        EVALUATED,
    ),
    (
        {**PBT, "parameters": {"training.weight_decay": {"type": "uniform", "low": 0, "high": 0.1}}},
        {"training": {"max_steps": 12, "eval_every": 4}, "checkpoint": {"every": 2}},
    ),
    (
        {
            **BOHB,
            "parameters": {"training.learning_rate": LR, "peft.r": {"type": "choice", "values": [4, 8]}},
        },
        EVALUATED,
    ),
    (
        {**BOHB, "parameters": {"training.max_steps": {"type": "int", "low": 6, "high": 12}}},
        {"training": {"max_steps": 12, "eval_every": 3, "warmup_steps": 0}},
    ),
]


@pytest.mark.parametrize(
    "sweep,spec", EXCHANGING_GOOD, ids=[f"{s['algorithm']}+{s['scheduler']}" for s, _ in EXCHANGING_GOOD]
)
def test_good_pbt_and_bohb_sweeps_validate(sweep, spec):
    s = validate_job(sweep_job({k: v for k, v in sweep.items() if v is not None}, **spec)).spec.sweep
    assert s.exchanges_checkpoints
    assert s.pbt_mutations() == (
        [p for p in s.parameters if p in ("training.learning_rate", "training.weight_decay")]
        if s.scheduler == "pbt"
        else []
    )


EXCHANGING_BAD = [
    # (sweep, extra spec, expected problem path, a fragment of the message)
    (
        {**PBT, "algorithm": "tpe", "parameters": {"training.learning_rate": LR}},
        EVALUATED,
        "spec.sweep",
        "use algorithm random or grid",
    ),
    (
        {
            **PBT,
            "parameters": {"training.learning_rate": LR, "peft.lora.r": {"type": "choice", "values": [4, 8]}},
        },
        EVALUATED,
        "spec.sweep.parameters.peft.lora.r",
        "peft.lora.r, which shapes the model, cannot vary",
    ),
    (
        {
            **PBT,
            "parameters": {
                "training.learning_rate": LR,
                "model.from_config.hidden_size": {"type": "choice", "values": [32, 64]},
            },
        },
        EVALUATED,
        "spec.sweep.parameters.model.from_config.hidden_size",
        "which shapes the model",
    ),
    (
        {**PBT, "parameters": {"training.seed": {"type": "choice", "values": [1, 2]}}},
        EVALUATED,
        "spec.sweep",
        "needs a parameter that may change mid-run: one of training.learning_rate",
    ),
    (
        {
            **PBT,
            "parameters": {
                "training.learning_rate": LR,
                "training.eval_every": {"type": "choice", "values": [2, 3]},
            },
        },
        EVALUATED,
        "spec.sweep",
        "training.eval_every cannot vary",
    ),
    (
        {**PBT, "parameters": {"training.learning_rate": LR}},
        {"training": {"max_steps": 12}},
        "spec.training.eval_every",
        "scheduler pbt counts time in evaluations",
    ),
    (
        {**PBT, "parameters": {"training.learning_rate": LR}},
        {**EVALUATED, "checkpoint": {"every": 2}},
        "spec.checkpoint.every",
        "checkpoint.every (2) must divide training.eval_every (3)",
    ),
    (
        {**PBT, "quantile_fraction": 0.6, "parameters": {"training.learning_rate": LR}},
        EVALUATED,
        "spec.sweep.quantile_fraction",
        "less than or equal to 0.5",
    ),
    (
        {**PBT, "perturbation_interval": 0, "parameters": {"training.learning_rate": LR}},
        EVALUATED,
        "spec.sweep.perturbation_interval",
        "greater than or equal to 1",
    ),
    (
        {**PBT, "max_concurrent": 3, "parameters": {"training.learning_rate": LR}},
        EVALUATED,
        "spec.sweep",
        "max_concurrent (3) must be at least the number of trials (4)",
    ),
    (
        {
            **PBT,
            "algorithm": "grid",
            "trials": None,
            "parameters": {
                "training.learning_rate": {"type": "grid", "values": [1e-4, 1e-3, 1e-2]},
                "training.seed": {"type": "grid", "values": [1, 2]},
            },
        },
        EVALUATED,
        "spec.sweep",
        "max_concurrent (4) must be at least the number of trials (6)",
    ),
    (
        {**BOHB, "scheduler": "asha", "parameters": {"training.learning_rate": LR}},
        EVALUATED,
        "spec.sweep",
        "algorithm bohb needs scheduler hyperband (run as HyperBandForBOHB), not asha",
    ),
    (
        {**BOHB, "scheduler": "fifo", "parameters": {"training.learning_rate": LR}},
        EVALUATED,
        "spec.sweep",
        "not fifo",
    ),
    (
        {**BOHB, "parameters": {"training.learning_rate": LR}},
        {"training": {"epochs": 2, "eval_every": 3}},
        "spec.training.max_steps",
        "algorithm bohb plans HyperBand brackets",
    ),
    (
        {**BOHB, "parameters": {"peft.r": {"type": "grid", "values": [4, 8]}}},
        EVALUATED,
        "spec.sweep",
        "use type choice with bohb",
    ),
]


@pytest.mark.parametrize(
    "sweep,spec,path,fragment", EXCHANGING_BAD, ids=[b[2] + ":" + b[3][:24] for b in EXCHANGING_BAD]
)
def test_bad_pbt_and_bohb_sweeps_name_the_field(sweep, spec, path, fragment):
    with pytest.raises(SpecError) as info:
        validate_job(sweep_job(sweep, **spec))
    problems = info.value.problems
    assert any(p.path == path and fragment in p.message for p in problems), [p.render() for p in problems]


def test_every_bad_parameter_is_reported_with_its_yaml_line():
    text = yaml.safe_dump(
        sweep_job(
            {
                "parameters": {
                    "training.learning_rate": LR,
                    "training.lr": LR,
                    "peft.r": {"type": "choice", "values": [-1]},
                }
            }
        ),
        sort_keys=False,
    )
    with pytest.raises(SpecError) as info:
        load_job(text, "sweep.yaml")
    rendered = str(info.value).splitlines()
    assert len(rendered) == 2
    lines = text.splitlines()
    for problem, key in zip(info.value.problems, ("training.lr", "peft.r")):
        assert problem.path == f"spec.sweep.parameters.{key}"
        assert lines[problem.line - 1].strip().startswith(key + ":")


def test_example_sweeps_validate():
    files = sorted((ROOT / "jobs" / "sweeps").glob("*.yaml"))
    assert files
    for path in files:
        job = load_job(path.read_text(), str(path))
        assert job.spec.sweep is not None


@pytest.mark.parametrize(
    "path, peft, expected",
    [
        ("peft.lora.r", {"type": "lora"}, "peft.r"),
        ("peft.qlora.r", {"type": "qlora"}, "peft.r"),
        ("peft.lora.r", {"type": "qlora"}, "peft.lora.r"),  # not the union member in use: left to be refused
        ("training.learning_rate", {"type": "qlora"}, "training.learning_rate"),
    ],
)
def test_peft_aliases_name_the_member_in_use(path, peft, expected):
    from kubetrain.spec.sweep import canonical_path

    assert canonical_path(path, {"peft": peft}) == expected
