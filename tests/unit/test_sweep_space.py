"""spec.sweep -> Ray Tune objects, trial specs and the Pareto front: tables over the pure translation functions."""

from __future__ import annotations

import copy

import pytest

from kubetrain.spec import validate_job
from tests.conftest import MINIMAL

pytest.importorskip("ray.tune")

from ray import tune  # noqa: E402
from ray.tune.search.sample import Categorical, Float, Integer  # noqa: E402

from kubetrain.runtime.sweep import space  # noqa: E402


def sweep_of(parameters: dict, **sweep) -> tuple:
    data = copy.deepcopy(MINIMAL)
    data["spec"]["training"] = {"max_steps": 10, "eval_every": 3}
    data["spec"]["sweep"] = {"parameters": parameters, **sweep}
    job = validate_job(data)
    return job, job.model_dump(mode="json")["spec"]


DISTRIBUTIONS = [
    # (distribution, domain class, sampler class name, (lower, upper), log scale)
    ({"type": "uniform", "low": 0.0, "high": 0.3}, Float, "_Uniform", (0.0, 0.3)),
    ({"type": "loguniform", "low": 1e-4, "high": 1e-2}, Float, "_LogUniform", (1e-4, 1e-2)),
    ({"type": "int", "low": 2, "high": 16}, Integer, "_Uniform", (2, 17)),  # Tune's upper bound is exclusive
    ({"type": "int", "low": 2, "high": 16, "log": True}, Integer, "_LogUniform", (2, 17)),
    ({"type": "choice", "values": [0.0, 0.1]}, Categorical, "_Uniform", None),
]


@pytest.mark.parametrize(
    "dist,domain,sampler,bounds",
    DISTRIBUTIONS,
    ids=[d[0]["type"] + str(d[0].get("log", "")) for d in DISTRIBUTIONS],
)
def test_each_distribution_becomes_the_matching_tune_domain(dist, domain, sampler, bounds):
    job, spec = sweep_of(
        {"training.warmup_ratio" if dist["type"] != "int" else "peft.r": dist}, algorithm="random"
    )
    ((path, dom),) = space.search_space(job.spec.sweep, spec).items()
    assert isinstance(dom, domain)
    assert type(dom.get_sampler()).__name__ == sampler
    if bounds:
        assert (dom.lower, dom.upper) == bounds
    else:
        assert dom.categories == dist["values"]


def test_grid_becomes_grid_search_and_the_lora_alias_its_field_path():
    job, spec = sweep_of({"peft.lora.r": {"type": "grid", "values": [4, 8]}}, algorithm="grid")
    assert space.search_space(job.spec.sweep, spec) == {"peft.r": tune.grid_search([4, 8])}


ALGORITHMS = [
    ("random", {}, "BasicVariantGenerator"),
    ("tpe", {}, "OptunaSearch"),
    ("hyperopt", {}, "HyperOptSearch"),
    ("bohb", {"scheduler": "hyperband"}, "TuneBOHB"),
    ("tpe", {"second_objective": {"metric": "eval_token_accuracy", "mode": "max"}}, "OptunaSearch"),
]


@pytest.mark.parametrize("algorithm,extra,cls", ALGORITHMS, ids=[a[0] + str(bool(a[1])) for a in ALGORITHMS])
def test_each_algorithm_builds_its_searcher(algorithm, extra, cls):
    job, _ = sweep_of(
        {"training.learning_rate": {"type": "loguniform", "low": 1e-4, "high": 1e-2}},
        algorithm=algorithm,
        seed=1,
        **extra,
    )
    limited = space.searcher(job.spec.sweep, 3)
    # Searchers are wrapped in a ConcurrencyLimiter; the variant generator limits itself
    searcher = getattr(limited, "searcher", limited)
    assert type(searcher).__name__ == cls
    assert limited.max_concurrent == 3
    if algorithm == "tpe":
        assert searcher._sampler._n_startup_trials == 2  # 8 trials: a third, at least 2
    if "second_objective" in extra:
        assert searcher._metric == ["eval_loss", "eval_token_accuracy"] and searcher._mode == ["min", "max"]
    if algorithm == "bohb":
        assert searcher._seed == 1


def test_grid_algorithm_uses_the_variant_generator():
    job, _ = sweep_of({"peft.r": {"type": "grid", "values": [4, 8]}}, algorithm="grid")
    assert type(space.searcher(job.spec.sweep, 1)).__name__ == "BasicVariantGenerator"


SCHEDULERS = [
    # (scheduler, class, brackets, expected max_t): max_steps 10 / eval_every 3 -> 4 evaluations -> max_t 5
    ("fifo", "FIFOScheduler", None, None),
    ("asha", "AsyncHyperBandScheduler", 1, 5),
    ("hyperband", "AsyncHyperBandScheduler", 3, 5),
    ("median", "MedianStoppingRule", None, None),
    ("pbt", "PopulationBasedTraining", None, None),
]


@pytest.mark.parametrize("name,cls,brackets,max_t", SCHEDULERS, ids=[s[0] for s in SCHEDULERS])
def test_each_scheduler_counts_time_in_evaluations(name, cls, brackets, max_t):
    job, _ = sweep_of(
        {"training.learning_rate": {"type": "loguniform", "low": 1e-4, "high": 1e-2}},
        scheduler=name,
        grace_period=2,
        reduction_factor=2,
        **({"algorithm": "random", "perturbation_interval": 2, "trials": 2} if name == "pbt" else {}),
    )
    sched = space.scheduler(job.spec.sweep, space.max_evaluations(job))
    assert type(sched).__name__ == cls
    if brackets:
        assert len(sched._brackets) == brackets and sched._max_t == max_t
        assert [m for m, _ in sched._brackets[0]._rungs] == [4, 2]  # grace 2, factor 2, below max_t 5
        assert sched._time_attr == "training_iteration" and sched._reduction_factor == 2
    if name == "median":
        assert sched._time_attr == "training_iteration" and sched._grace_period == 2
    if name == "pbt":
        assert sched._time_attr == "training_iteration" and sched._perturbation_interval == 2


def test_bohb_runs_hyperband_as_hyperband_for_bohb():
    job, _ = sweep_of(
        {"training.learning_rate": {"type": "loguniform", "low": 1e-4, "high": 1e-2}},
        algorithm="bohb",
        scheduler="hyperband",
        reduction_factor=2,
    )
    sched = space.scheduler(job.spec.sweep, space.max_evaluations(job))
    assert type(sched).__name__ == "HyperBandForBOHB"
    assert (sched._time_attr, sched._max_t_attr, sched._eta) == ("training_iteration", 5, 2)


PBT_PARAMETERS = {
    "training.learning_rate": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
    "training.weight_decay": {"type": "uniform", "low": 0.0, "high": 0.1},
    "training.max_grad_norm": {"type": "choice", "values": [0.5, 1.0, 2.0]},
    "training.seed": {"type": "choice", "values": [1, 2]},  # drawn once: not mutated
}


def test_pbt_mutates_the_mid_run_parameters_within_their_bounds():
    import random

    job, spec = sweep_of(
        PBT_PARAMETERS,
        algorithm="random",
        scheduler="pbt",
        quantile_fraction=0.5,
        trials=2,
        max_concurrent=2,
        synch=True,
    )
    sched = space.scheduler(job.spec.sweep, space.max_evaluations(job))
    mutations = sched._hyperparam_mutations
    assert sorted(mutations) == ["training.learning_rate", "training.max_grad_norm", "training.weight_decay"]
    assert type(mutations["training.learning_rate"].get_sampler()).__name__ == "_LogUniform"
    assert (mutations["training.weight_decay"].lower, mutations["training.weight_decay"].upper) == (0.0, 0.1)
    assert mutations["training.max_grad_norm"] == [0.5, 1.0, 2.0]
    assert sched._quantile_fraction == 0.5 and sched._synch is True
    # Tune's own explore step (x1.2 / x0.8 or a resample), then our clamp: never outside the search space
    from ray.tune.schedulers.pbt import _explore

    random.seed(0)
    top = {
        "training.learning_rate": 1e-2,
        "training.weight_decay": 0.1,
        "training.max_grad_norm": 2.0,
        "training.seed": 2,
    }
    seen = set()
    for _ in range(40):
        new, ops = _explore(top, mutations, 0.25, (1.2, 0.8), sched._custom_explore_fn)
        assert 1e-4 <= new["training.learning_rate"] <= 1e-2 and 0.0 <= new["training.weight_decay"] <= 0.1
        assert new["training.max_grad_norm"] in (1.0, 2.0) or ops["training.max_grad_norm"] == "resample"
        assert new["training.seed"] == 2  # copied from the trial it restarts from
        seen.add(new["training.learning_rate"])
    assert 1e-2 in seen and 1e-2 * 0.8 in seen  # clamped up-perturbation and a down-perturbation


@pytest.mark.parametrize(
    "config,bounds,expected",
    [
        ({"a": 1.5, "b": 3}, {"a": (0.0, 1.0), "b": (1, 2)}, {"a": 1.0, "b": 2}),
        ({"a": -0.1}, {"a": (0.0, 1.0)}, {"a": 0.0}),
        ({"a": 0.5, "c": "x"}, {"a": (0.0, 1.0)}, {"a": 0.5, "c": "x"}),
        ({"a": None}, {"a": (0.0, 1.0)}, {"a": None}),
    ],
)
def test_clamp(config, bounds, expected):
    got = space.clamp(dict(config), bounds)
    assert got == expected and all(type(got[k]) is type(expected[k]) for k in expected)


@pytest.mark.parametrize(
    "scheduler,keep_last,expected",
    [
        ("pbt", 1, 5),  # 4 evaluations + 1: any evaluation's checkpoint may be restarted from later
        ("pbt", 9, 9),
        ("asha", 1, 1),
    ],
)
def test_pbt_trials_keep_every_evaluation_checkpoint(scheduler, keep_last, expected):
    data = copy.deepcopy(MINIMAL)
    data["spec"]["training"] = {"max_steps": 10, "eval_every": 3}
    data["spec"]["checkpoint"] = {"keep_last": keep_last}
    data["spec"]["sweep"] = {
        "algorithm": "random",
        "scheduler": scheduler,
        "trials": 2,
        "parameters": {"training.learning_rate": {"type": "loguniform", "low": 1e-4, "high": 1e-2}},
    }
    job = validate_job(data)
    assert space.trial_keep_last(job) == expected
    trial = space.trial_job(
        job.model_dump(mode="json", exclude_none=True),
        {},
        name="t-1",
        storage="/tmp/s",
        experiment="e",
        parent_name="t",
        keep_last=space.trial_keep_last(job),
    )
    assert trial.spec.checkpoint.keep_last == expected


def test_bohb_trials_keep_every_evaluation_checkpoint_too():
    # a paused trial restarts from its checkpoint of the evaluation Tune counted, which its run has passed
    data = copy.deepcopy(MINIMAL)
    data["spec"]["training"] = {"max_steps": 10, "eval_every": 3}
    data["spec"]["checkpoint"] = {"keep_last": 1}
    data["spec"]["sweep"] = {
        "algorithm": "bohb",
        "scheduler": "hyperband",
        "trials": 2,
        "parameters": {"training.learning_rate": {"type": "loguniform", "low": 1e-4, "high": 1e-2}},
    }
    assert space.trial_keep_last(validate_job(data)) == 5


@pytest.mark.parametrize(
    "training,swept,expected",
    [
        ({"max_steps": 10, "eval_every": 3}, None, 4),
        ({"max_steps": 10, "eval_every": 5}, None, 2),
        ({"max_steps": 10, "eval_every": 5}, {"type": "int", "low": 5, "high": 20}, 4),
        ({"max_steps": 10, "eval_every": 5}, {"type": "choice", "values": [10, 30]}, 6),
        ({"epochs": 1}, None, None),  # unknown until the data is loaded
        ({"max_steps": 10}, None, None),  # evaluated once per epoch
    ],
)
def test_max_evaluations(training, swept, expected):
    data = copy.deepcopy(MINIMAL)
    data["spec"]["training"] = training
    params = {"training.learning_rate": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}
    if swept:
        params["training.max_steps"] = swept
        data["spec"]["training"]["warmup_steps"] = None
    data["spec"]["sweep"] = {"parameters": params}
    assert space.max_evaluations(validate_job(data)) == expected


def test_trial_job_sets_params_and_drops_the_sweep():
    job, _ = sweep_of({"peft.lora.r": {"type": "choice", "values": [4, 8]}})
    base = job.model_dump(mode="json", exclude_none=True)
    import numpy as np

    trial = space.trial_job(
        base,
        {"peft.r": np.int64(4), "training.learning_rate": np.float64(0.003)},
        name="t-abc",
        storage="/tmp/s/trials",
        experiment="exp",
        parent_name="t",
    )
    assert trial.spec.sweep is None and trial.name == "t-abc"
    assert (
        trial.spec.peft.r == 4
        and type(trial.spec.peft.r) is int
        and trial.spec.training.learning_rate == 0.003
    )
    assert trial.spec.checkpoint.storage == "/tmp/s/trials"
    assert (trial.spec.tracking.experiment, trial.spec.tracking.run_name) == ("exp", "t-abc")
    assert trial.metadata.labels["kubetrain.dev/sweep"] == "t"
    assert job.spec.peft.r == 8  # the sweep's own job is untouched


def test_runnable_yaml_is_a_valid_job_without_a_sweep():
    job, _ = sweep_of({"peft.r": {"type": "choice", "values": [4, 8]}})
    data = space.runnable_yaml_data(job.model_dump(mode="json", exclude_unset=True), {"peft.r": 4}, "t-best")
    again = validate_job(data)
    assert again.spec.sweep is None and again.spec.peft.r == 4 and again.name == "t-best"


@pytest.mark.parametrize(
    "sweep_name,trial_id,expected",
    [
        ("lora", "a1b2c3d4", "lora-a1b2c3d4"),
        ("lora", "a1b2c_00003", "lora-a1b2c-00003"),
        ("x" * 63, "a1b2c3d4", "x" * 54 + "-a1b2c3d4"),
        ("lora", "a1b2c_00003:2", "lora-a1b2c-00003-r2"),  # the 2nd restart from another trial (pbt)
        ("x" * 63, "a1b2c3d4:12", "x" * 50 + "-a1b2c3d4-r12"),
    ],
)
def test_trial_names_are_rfc1123_labels(sweep_name, trial_id, expected):
    trial_id, _, segment = trial_id.partition(":")
    name = space.trial_name(sweep_name, trial_id, int(segment or 0))
    assert name == expected and len(name) <= 63


@pytest.mark.parametrize(
    "requested,cpus,per_trial,expected",
    [
        (2, 2.0, 0.6, 2),
        (4, 2.0, 0.6, 3),
        (4, 2.0, 1.1, 1),
        (1, 16.0, 0.6, 1),
        (3, 2.0, 2.1, 1),
    ],
)
def test_fitting_concurrency(requested, cpus, per_trial, expected):
    assert space.fitting_concurrency(requested, cpus, per_trial) == expected


def test_pareto_front_keeps_the_non_dominated_trials():
    rows = [
        {"id": "a", "loss": 1.0, "acc": 0.5},
        {"id": "b", "loss": 2.0, "acc": 0.9},
        {"id": "c", "loss": 2.5, "acc": 0.4},  # dominated by a and b
        {"id": "d", "loss": 1.0, "acc": 0.5},  # a tie with a: neither dominates
        {"id": "e", "loss": 0.5},
    ]  # lacks a metric
    front = space.pareto_front(rows, [("loss", "min"), ("acc", "max")])
    assert [r["id"] for r in front] == ["a", "b", "d"]


EVERY_DISTRIBUTION = {
    "training.warmup_ratio": {"type": "uniform", "low": 0.0, "high": 0.3},
    "training.learning_rate": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
    "peft.lora.r": {"type": "int", "low": 2, "high": 16, "log": True},
    "peft.alpha": {"type": "int", "low": 4, "high": 8},
    "training.schedule": {"type": "choice", "values": ["linear", "cosine"]},
}


@pytest.mark.parametrize("algorithm", ["tpe", "hyperopt"])
def test_model_based_searchers_take_every_distribution_and_suggest_valid_trials(algorithm):
    job, spec = sweep_of(EVERY_DISTRIBUTION, algorithm=algorithm, seed=0)
    limited = space.searcher(job.spec.sweep, 4)
    assert limited.set_search_properties("eval_loss", "min", space.search_space(job.spec.sweep, spec))
    base = job.model_dump(mode="json", exclude_none=True)
    for i in range(4):
        params = limited.suggest(f"t{i}")
        assert sorted(params) == sorted(
            ["training.warmup_ratio", "training.learning_rate", "peft.r", "peft.alpha", "training.schedule"]
        )
        trial = space.trial_job(
            base, params, name=f"t-{i}", storage="/tmp/s", experiment="e", parent_name="t"
        )
        assert (
            0.0 <= trial.spec.training.warmup_ratio <= 0.3
            and 1e-4 <= trial.spec.training.learning_rate <= 1e-2
        )
        assert 2 <= trial.spec.peft.r <= 16 and 4 <= trial.spec.peft.alpha <= 8
        assert trial.spec.training.schedule in ("linear", "cosine")
    assert limited.suggest("t5") is None  # the concurrency limit holds back a fifth running trial


@pytest.mark.parametrize("trials,expected", [(1, 2), (8, 2), (12, 4), (30, 10), (200, 10)])
def test_startup_trials_leave_room_for_the_model(trials, expected):
    assert space.startup_trials(trials) == expected
