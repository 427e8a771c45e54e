"""Pure translation of a spec.sweep into Ray Tune objects (search space, searcher, scheduler) and trial specs."""

from __future__ import annotations

import copy
import functools
import math
from typing import Any

from ...spec import TrainingJob, set_path, validate_job
from ...spec.sweep import SweepSpec, canonical_path

UNBOUNDED_EVALS = 10_000  # ASHA's max_t when the number of evaluations per trial is not known in advance


def search_space(sweep: SweepSpec, spec_data: dict) -> dict[str, Any]:
    """{canonical dotted path: Tune domain}: uniform, loguniform, int (inclusive, optionally log), choice, grid."""
    from ray import tune

    out: dict[str, Any] = {}
    for raw, d in sweep.parameters.items():
        path = canonical_path(raw, spec_data)
        if d.type == "uniform":
            out[path] = tune.uniform(d.low, d.high)
        elif d.type == "loguniform":
            out[path] = tune.loguniform(d.low, d.high)
        elif d.type == "int":
            out[path] = (tune.lograndint if d.log else tune.randint)(
                d.low, d.high + 1
            )  # Tune's upper is exclusive
        elif d.type == "choice":
            out[path] = tune.choice(list(d.values))
        elif d.type == "grid":
            out[path] = tune.grid_search(list(d.values))
    return out


def searcher(sweep: SweepSpec, max_concurrent: int):
    """The Tune search algorithm, capped at max_concurrent running trials.

    random and grid: Tune's basic variant generator; tpe: Optuna TPE (multi-objective with a second
    objective); hyperopt: HyperOpt TPE; bohb: TuneBOHB (hpbandster's KDE model). pbt draws its
    population with random or grid. Single-objective metric and mode are left to TuneConfig.
    """
    from ray.tune.search import ConcurrencyLimiter

    objectives = sweep.objectives()
    if sweep.algorithm == "tpe":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        # Optuna's default of 10 random start-up trials would make a small sweep pure random search
        sampler = optuna.samplers.TPESampler(
            seed=sweep.seed, n_startup_trials=startup_trials(sweep.num_trials)
        )
        if len(objectives) > 1:
            found = OptunaSearch(
                metric=[o.metric for o in objectives], mode=[o.mode for o in objectives], sampler=sampler
            )
        else:
            found = OptunaSearch(sampler=sampler)
        return ConcurrencyLimiter(found, max_concurrent=max_concurrent)
    if sweep.algorithm == "bohb":
        from ray.tune.search.bohb import TuneBOHB

        return ConcurrencyLimiter(TuneBOHB(seed=sweep.seed), max_concurrent=max_concurrent)
    if sweep.algorithm == "hyperopt":
        from ray.tune.search.hyperopt import HyperOptSearch

        found = HyperOptSearch(
            random_state_seed=sweep.seed, n_initial_points=startup_trials(sweep.num_trials)
        )
        return ConcurrencyLimiter(found, max_concurrent=max_concurrent)
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return BasicVariantGenerator(random_state=sweep.seed, max_concurrent=max_concurrent)


def startup_trials(trials: int) -> int:
    """Random trials before a model-based searcher starts modelling: a third of the budget, 2 to 10."""
    return max(2, min(10, trials // 3))


def scheduler(sweep: SweepSpec, max_evaluations: int | None):
    """The trial scheduler; time is counted in evaluations (one Tune iteration per periodic evaluation).

    max_t is one more than the evaluations a trial makes, so ASHA never stops a trial merely for finishing.
    """
    from ray.tune.schedulers import (
        AsyncHyperBandScheduler,
        FIFOScheduler,
        HyperBandForBOHB,
        MedianStoppingRule,
        PopulationBasedTraining,
    )

    max_t = (max_evaluations + 1) if max_evaluations else UNBOUNDED_EVALS
    common = {"time_attr": "training_iteration"}  # metric and mode come from TuneConfig
    if sweep.scheduler == "pbt":
        return PopulationBasedTraining(
            **common,
            perturbation_interval=sweep.perturbation_interval,
            hyperparam_mutations=pbt_mutations(sweep),
            quantile_fraction=sweep.quantile_fraction,
            custom_explore_fn=functools.partial(clamp, bounds=parameter_bounds(sweep)),
            synch=sweep.synch,
        )
    if sweep.scheduler == "hyperband" and sweep.algorithm == "bohb":  # synchronous: pauses trials at rungs
        return HyperBandForBOHB(**common, max_t=max_t, reduction_factor=sweep.reduction_factor)
    if sweep.scheduler in ("asha", "hyperband"):  # hyperband: asynchronous, ASHA over 3 brackets
        return AsyncHyperBandScheduler(
            **common,
            max_t=max_t,
            grace_period=min(sweep.grace_period, max_t),
            reduction_factor=sweep.reduction_factor,
            brackets=1 if sweep.scheduler == "asha" else 3,
        )
    if sweep.scheduler == "median":
        return MedianStoppingRule(**common, grace_period=sweep.grace_period, min_samples_required=2)
    return FIFOScheduler()


def pbt_mutations(sweep: SweepSpec) -> dict[str, Any]:
    """{path: what PBT resamples from}: a Tune domain for ranges (perturbed by x0.8 / x1.2), a list for choices."""
    from ray import tune

    out: dict[str, Any] = {}
    for path in sweep.pbt_mutations():
        d = sweep.parameters[path]
        if d.type == "uniform":
            out[path] = tune.uniform(d.low, d.high)
        elif d.type == "loguniform":
            out[path] = tune.loguniform(d.low, d.high)
        elif d.type == "int":
            out[path] = (tune.lograndint if d.log else tune.randint)(d.low, d.high + 1)
        else:  # choice, grid: PBT shifts to a neighbouring value or resamples the list
            out[path] = list(d.values)
    return out


def parameter_bounds(sweep: SweepSpec) -> dict[str, tuple[float, float]]:
    """{path: (low, high)} of the range parameters: a perturbation (x1.2) must not leave the search space."""
    return {
        p: (d.low, d.high) for p, d in sweep.parameters.items() if d.type in ("uniform", "loguniform", "int")
    }


def clamp(config: dict, bounds: dict[str, tuple[float, float]]) -> dict:
    """PBT's custom_explore_fn: perturbed values clipped into their distribution's [low, high]."""
    for path, (low, high) in bounds.items():
        if config.get(path) is not None:
            config[path] = type(config[path])(min(max(config[path], low), high))
    return config


def trial_keep_last(job: TrainingJob) -> int:
    """Checkpoints each trial keeps when trials restart from checkpoints (pbt, bohb): all its evaluations'.

    Another trial may restart from any of them later (pbt; the Tune checkpoint only records the path), and a
    paused trial restarts from the one of the evaluation Tune counted last, which its run has usually passed
    by then (it trains on while Tune decides). The spec's keep_last otherwise.
    """
    keep = job.spec.checkpoint.keep_last
    if job.spec.sweep is None or not job.spec.sweep.exchanges_checkpoints:
        return keep
    return max(keep, min(1000, (max_evaluations(job) or 1000) + 1))


def max_evaluations(job: TrainingJob) -> int | None:
    """Periodic evaluations per trial when max_steps and eval_every fix them (the largest over the sweep)."""
    t, sweep = job.spec.training, job.spec.sweep
    steps = [t.max_steps] if t.max_steps else []
    d = sweep.parameters.get("training.max_steps") if sweep else None
    if d is not None:
        steps = [d.high] if d.type == "int" else [max(d.values)]
    if not steps or not t.eval_every:
        return None
    return math.ceil(max(steps) / t.eval_every)


def trial_job(
    base: dict,
    params: dict[str, Any],
    *,
    name: str,
    storage: str,
    experiment: str,
    parent_name: str,
    keep_last: int | None = None,
) -> TrainingJob:
    """The TrainingJob one trial runs: the sweep's job with params set, no sweep, its own name and storage."""
    data = copy.deepcopy(base)
    data.pop("status", None)
    data["metadata"] = {
        "name": name,
        "labels": {**data["metadata"].get("labels", {}), "kubetrain.dev/sweep": parent_name},
    }
    data["spec"].pop("sweep", None)
    for path, value in params.items():
        set_path(data["spec"], path, _plain(value))
    tracking = data["spec"].setdefault("tracking", {})
    tracking.update({"experiment": experiment, "run_name": name})
    data["spec"].setdefault("checkpoint", {})["storage"] = storage
    if keep_last is not None:
        data["spec"]["checkpoint"]["keep_last"] = keep_last
    return validate_job(data)


def runnable_yaml_data(base: dict, params: dict[str, Any], name: str) -> dict:
    """A ready-to-run TrainingJob (as data) with the best params set and the sweep section removed."""
    data = copy.deepcopy(base)
    data.pop("status", None)
    data["metadata"] = {"name": name}
    data["spec"].pop("sweep", None)
    for path, value in params.items():
        set_path(data["spec"], path, _plain(value))
    return data


def trial_name(sweep_name: str, trial_id: str, segment: int = 0) -> str:
    """An RFC 1123 job name for a trial: '<sweep>-<tune trial id>' within 63 characters.

    segment > 0 names the n-th restart of the trial from another trial's checkpoint (pbt): '...-r<n>'.
    """
    tid = trial_id.replace("_", "-").lower() + (f"-r{segment}" if segment else "")
    return f"{sweep_name[: 62 - len(tid)].rstrip('-')}-{tid}"


def fitting_concurrency(requested: int, cpus: float, per_trial: float) -> int:
    """How many trials can run at once on `cpus` CPUs when each needs `per_trial` (at least 1)."""
    return max(1, min(requested, int(cpus // per_trial + 1e-9)))


def pareto_front(rows: list[dict], objectives: list[tuple[str, str]]) -> list[dict]:
    """Rows not dominated by any other row on all (metric, mode) objectives (rows lacking a metric are dropped)."""
    rows = [r for r in rows if all(r.get(m) is not None for m, _ in objectives)]

    def key(r: dict) -> list[float]:
        return [r[m] if mode == "min" else -r[m] for m, mode in objectives]

    def dominates(a: list[float], b: list[float]) -> bool:
        return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))

    return [r for r in rows if not any(dominates(key(o), key(r)) for o in rows if o is not r)]


def _plain(value: Any) -> Any:
    """numpy scalars (from samplers) -> Python scalars, so specs and YAML stay plain."""
    item = getattr(value, "item", None)
    return item() if callable(item) and not isinstance(value, (list, dict, str)) else value
