"""The sweep section: a search space over dotted spec paths, a search algorithm, a trial scheduler and budgets.

Checks that need the rest of the spec (does the path exist, would its field accept every value the
distribution can produce) live in `sweep_problems`, called from TrainingJobSpec's validator.
"""

from __future__ import annotations

import copy
import difflib
import math
from typing import Annotated, Any, Literal, Union

from pydantic import Field, Tag, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from .base import Spec, type_discriminator

# Sections a sweep may not vary: they say where and how trials run, not what they learn.
FIXED_SECTIONS = ("sweep", "checkpoint", "tracking", "resources", "lifecycle", "env")
# What PBT may change in a running trial (the next segment starts from another trial's checkpoint with it).
PBT_MUTABLE = ("training.learning_rate", "training.weight_decay", "training.max_grad_norm")
# What a checkpoint is shaped by: a trial restarted from another's checkpoint must share these.
PBT_SHAPE_SECTIONS = ("model", "peft")
SCALAR = Union[bool, int, float, str, None]
# A trial's driver (the Tune function that runs the trial's Ray Train run) takes this CPU share. In a cluster
# the drivers run on the Ray head, which advertises TRIAL_DRIVER_RESOURCE (one unit per concurrent trial), so
# they never take a slice of a worker pod that a training worker needs.
TRIAL_DRIVER_CPUS = 0.1
TRIAL_DRIVER_RESOURCE = "kubetrain_trial_driver"
MAX_CLUSTER_WORKERS = 4096  # worker pods one job's Ray cluster may ask for (sweeps: trials at once x workers)


class Uniform(Spec):
    """A float drawn uniformly from [low, high]."""

    type: Literal["uniform"] = Field("uniform", description="Uniform float.")
    low: float = Field(..., description="Lower bound (inclusive).")
    high: float = Field(..., description="Upper bound.")


class LogUniform(Uniform):
    """A positive float drawn uniformly on a log scale from [low, high] (learning rates)."""

    type: Literal["loguniform"] = Field("loguniform", description="Log-uniform float.")


class IntRange(Spec):
    """An integer drawn from low..high, both included (optionally on a log scale)."""

    type: Literal["int"] = Field("int", description="Integer range.")
    low: int = Field(..., description="Smallest value (inclusive).")
    high: int = Field(..., description="Largest value (inclusive).")
    log: bool = Field(False, description="Sample on a log scale (needs low >= 1).")


class Choice(Spec):
    """One of a list of values, sampled (or modelled by TPE / HyperOpt as a categorical)."""

    type: Literal["choice"] = Field("choice", description="Categorical choice.")
    values: list[Any] = Field(..., min_length=1, description="The values to choose from.")


class Grid(Spec):
    """Every one of a list of values is tried (algorithm grid or random)."""

    type: Literal["grid"] = Field("grid", description="Grid over all the values.")
    values: list[Any] = Field(..., min_length=1, description="The values to try, each in its own trial.")


Distribution = Annotated[
    Union[
        Annotated[Uniform, Tag("uniform")],
        Annotated[LogUniform, Tag("loguniform")],
        Annotated[IntRange, Tag("int")],
        Annotated[Choice, Tag("choice")],
        Annotated[Grid, Tag("grid")],
    ],
    type_discriminator("uniform"),
]


class Objective(Spec):
    """A validation metric and whether lower or higher is better."""

    metric: str = Field(..., description="Validation metric, e.g. eval_loss, eval_token_accuracy, eval_f1.")
    mode: Literal["min", "max"] = Field(..., description="min: lower is better; max: higher is better.")


class SweepSpec(Spec):
    """Run many trials of this job, each a full Ray Train run with some fields replaced, and pick the best."""

    parameters: dict[str, Distribution] = Field(
        ...,
        min_length=1,
        description="Search space keyed by dotted paths relative to spec (training.learning_rate, peft.r, "
        "training.warmup_ratio); each a distribution: uniform, loguniform, int, choice or grid.",
    )
    algorithm: Literal["random", "grid", "tpe", "hyperopt", "bohb"] = Field(
        "tpe",
        description="random: independent samples; grid: every combination of grid values; "
        "tpe: Optuna's Bayesian TPE (default); hyperopt: HyperOpt's TPE; "
        "bohb: BOHB (needs scheduler hyperband, which it runs as HyperBandForBOHB).",
    )
    scheduler: Literal["fifo", "asha", "hyperband", "median", "pbt"] = Field(
        "fifo",
        description="fifo: every trial runs to the end; asha: asynchronous successive halving; "
        "hyperband: asynchronous HyperBand (ASHA over 3 brackets; synchronous HyperBandForBOHB with "
        "algorithm bohb); median: stop trials below the running median; pbt: Population Based Training "
        "(algorithm random or grid draws the population, which trains together: max_concurrent >= trials; "
        "every perturbation_interval evaluations the "
        "worst quantile_fraction of trials restart from a best trial's checkpoint with its "
        f"{', '.join(PBT_MUTABLE)} perturbed).",
    )
    trials: int | None = Field(
        None,
        ge=1,
        le=10_000,
        description="Trials to run (default 8); leave unset with algorithm grid, where the grid decides.",
    )
    max_concurrent: int = Field(
        2, ge=1, le=1024, description="Trials running at once (lowered to what the Ray cluster's CPUs fit)."
    )
    metric: str = Field(
        "eval_loss", description="Validation metric the search optimises (reported per evaluation)."
    )
    mode: Literal["min", "max"] = Field("min", description="min: lower is better; max: higher is better.")
    second_objective: Objective | None = Field(
        None,
        description="A second metric for multi-objective search (algorithm tpe, scheduler fifo); "
        "the sweep reports the Pareto front.",
    )
    grace_period: int = Field(
        1, ge=1, description="Evaluations every trial gets before asha / hyperband / median may stop it."
    )
    reduction_factor: float = Field(
        3.0,
        gt=1.0,
        le=16.0,
        description="asha / hyperband: keep 1/reduction_factor of the trials at each rung.",
    )
    perturbation_interval: int = Field(
        2,
        ge=1,
        le=10_000,
        description="pbt: evaluations (training.eval_every steps each) between a trial's perturbations; "
        "each evaluation saves a checkpoint another trial can restart from.",
    )
    quantile_fraction: float = Field(
        0.25,
        gt=0.0,
        le=0.5,
        description="pbt: the fraction of trials counted as worst (restarted from a best one) and as best.",
    )
    synch: bool = Field(
        False,
        description="pbt: perturb every trial at the same evaluation, waiting (paused) for the slowest: "
        "repeatable, at the cost of a restart of every trial per perturbation; false: each trial on its own.",
    )
    max_failed_trials: int = Field(
        0, ge=0, description="Failed trials tolerated; one more ends the sweep (each failure is recorded)."
    )
    time_budget_s: float | None = Field(
        None, gt=0.0, description="Stop starting and running trials after this many seconds."
    )
    seed: int | None = Field(
        None, ge=0, description="Seed of the search algorithm (reproducible suggestions)."
    )

    @model_validator(mode="after")
    def _consistent(self) -> SweepSpec:
        bounds = [
            InitErrorDetails(
                type=PydanticCustomError("sweep", "{why}", {"why": why}),
                loc=("parameters", path),
                input=d.model_dump(),
            )
            for path, d in self.parameters.items()
            if (why := bounds_problem(d))
        ]
        if bounds:
            raise ValidationError.from_exception_data("SweepSpec", bounds)
        grids = [p for p, d in self.parameters.items() if d.type == "grid"]
        if self.algorithm == "grid":
            others = [p for p in self.parameters if p not in grids]
            if others:
                raise ValueError(
                    f"algorithm grid needs every parameter to be type grid; not: {', '.join(others)}"
                )
            if self.trials is not None:
                raise ValueError("algorithm grid runs every combination once: leave trials unset")
        elif grids and self.algorithm not in ("random",):
            raise ValueError(
                f"type grid ({', '.join(grids)}) works with algorithm grid or random; "
                f"use type choice with {self.algorithm}"
            )
        if self.algorithm == "bohb" and self.scheduler != "hyperband":
            raise ValueError(
                f"algorithm bohb needs scheduler hyperband (run as HyperBandForBOHB), not {self.scheduler}"
            )
        if self.scheduler == "pbt":
            self._check_pbt()
        if self.second_objective is not None:
            if self.algorithm != "tpe" or self.scheduler != "fifo":
                raise ValueError(
                    "second_objective needs algorithm tpe (Optuna multi-objective) and scheduler fifo"
                )
            if self.second_objective.metric == self.metric:
                raise ValueError("second_objective.metric must differ from metric")
        return self

    def _check_pbt(self) -> None:
        if self.algorithm not in ("random", "grid"):
            raise ValueError(
                f"scheduler pbt mutates running trials itself: use algorithm random or grid to draw the "
                f"first population, not {self.algorithm}"
            )
        shaped = [
            InitErrorDetails(
                type=PydanticCustomError("sweep", "{why}", {"why": why}),
                loc=("parameters", path),
                input=d.model_dump(),
            )
            for path, d in self.parameters.items()
            if path.split(".")[0] in PBT_SHAPE_SECTIONS
            and (
                why := f"scheduler pbt restarts trials from other trials' checkpoints, so {path}, which "
                f"shapes the model, cannot vary; sweep it with another scheduler"
            )
        ]
        if shaped:
            raise ValidationError.from_exception_data("SweepSpec", shaped)
        if not any(p in PBT_MUTABLE for p in self.parameters):
            raise ValueError(
                f"scheduler pbt needs a parameter that may change mid-run: one of {', '.join(PBT_MUTABLE)}"
            )
        if "training.eval_every" in self.parameters:
            raise ValueError("scheduler pbt counts time in evaluations: training.eval_every cannot vary")
        if self.max_concurrent < self.population:
            raise ValueError(
                f"scheduler pbt trains its population together: max_concurrent ({self.max_concurrent}) must be "
                f"at least the number of trials ({self.population})"
            )

    @property
    def population(self) -> int:
        """Trials the sweep runs in all: the grid's combinations (algorithm grid), else num_trials."""
        if self.algorithm != "grid":
            return self.num_trials
        return math.prod(len(d.values) for d in self.parameters.values())

    def pbt_mutations(self) -> list[str]:
        """The parameters PBT perturbs (the others are drawn once and copied with the checkpoint)."""
        return [p for p in self.parameters if p in PBT_MUTABLE] if self.scheduler == "pbt" else []

    @property
    def exchanges_checkpoints(self) -> bool:
        """Trials may be paused or restarted from a checkpoint (pbt; bohb's synchronous HyperBand)."""
        return self.scheduler == "pbt" or self.algorithm == "bohb"

    @property
    def concurrent_trials(self) -> int:
        """Trials that can run at once: max_concurrent, never more than the sweep has trials."""
        return min(self.max_concurrent, self.population)

    @property
    def num_trials(self) -> int:
        """Samples Tune draws: 1 pass over the grid for algorithm grid, else `trials` (default 8)."""
        return 1 if self.algorithm == "grid" else (self.trials or 8)

    def objectives(self) -> list[Objective]:
        first = Objective(metric=self.metric, mode=self.mode)
        return [first] + ([self.second_objective] if self.second_objective else [])


def bounds_problem(dist: Any) -> str | None:
    """Why a range distribution is empty or impossible (None when fine)."""
    if dist.type not in ("uniform", "loguniform", "int"):
        return None
    if not dist.low < dist.high:
        return f"low ({dist.low}) must be below high ({dist.high})"
    if dist.type == "loguniform" and dist.low <= 0:
        return f"loguniform needs low > 0, got {dist.low}"
    if dist.type == "int" and dist.log and dist.low < 1:
        return "int with log: true needs low >= 1"
    return None


def canonical_path(path: str, spec_data: dict) -> str:
    """`peft.lora.r` -> `peft.r` when spec.peft is LoRA (the union is tagged by type), likewise `peft.qlora.r`
    for QLoRA; others unchanged."""
    head, _, rest = path.partition(".")
    kind, _, field = rest.partition(".")
    if (
        head == "peft"
        and field
        and kind in ("lora", "qlora")
        and (spec_data.get("peft") or {}).get("type") == kind
    ):
        return "peft." + field
    return path


def values_to_check(dist: Any) -> list[Any]:
    """The values whose acceptance proves every draw acceptable: interval ends, or every listed value."""
    if dist.type in ("choice", "grid"):
        return list(dist.values)
    return [dist.low, dist.high]


def cadence_problems(spec_model: Any) -> list[tuple[tuple, str, Any]]:
    """pbt and bohb restart trials from the checkpoint of an evaluation: every evaluation needs one.

    Their time is counted in evaluations, so training.eval_every must be set; bohb's HyperBand also plans
    its brackets from the number of evaluations, so training.max_steps must be set too.
    """
    sweep, t, ck = spec_model.sweep, spec_model.training, spec_model.checkpoint
    if not sweep.exchanges_checkpoints:
        return []
    who = "scheduler pbt" if sweep.scheduler == "pbt" else "algorithm bohb"
    out: list[tuple[tuple, str, Any]] = []
    if not t.eval_every:
        out.append(
            (("training", "eval_every"), f"{who} counts time in evaluations: set training.eval_every", None)
        )
    elif ck.every is not None and t.eval_every % ck.every:
        out.append(
            (
                ("checkpoint", "every"),
                f"{who} restarts trials from the checkpoint of an evaluation: checkpoint.every ({ck.every}) "
                f"must divide training.eval_every ({t.eval_every}), or be null (a checkpoint at each evaluation)",
                ck.every,
            )
        )
    if sweep.algorithm == "bohb" and t.max_steps is None and "training.max_steps" not in sweep.parameters:
        out.append(
            (
                ("training", "max_steps"),
                "algorithm bohb plans HyperBand brackets from the evaluations per trial: set training.max_steps",
                None,
            )
        )
    return out


def _lookup(data: Any, keys: list[str]) -> tuple[bool, Any]:
    cur = data
    for key in keys:
        if isinstance(cur, dict) and key in cur:
            cur = cur[key]
        else:
            return False, None
    return True, cur


def cluster_size_problems(spec_model: Any) -> list[tuple[tuple, str, Any]]:
    """A sweep's Ray cluster holds every concurrent trial's workers: refuse one larger than a job may ask for."""
    sweep, workers = spec_model.sweep, spec_model.resources.workers
    pods = sweep.concurrent_trials * workers
    if pods <= MAX_CLUSTER_WORKERS:
        return []
    fits = max(1, MAX_CLUSTER_WORKERS // workers)
    why = (
        f"{sweep.concurrent_trials} trials at once x resources.workers {workers} = {pods} worker pods, more than "
        f"the {MAX_CLUSTER_WORKERS} one job's Ray cluster may have; at most {fits} with {workers} workers"
    )
    return [(("sweep", "max_concurrent"), why, sweep.max_concurrent)]


def sweep_problems(spec_model: Any, spec_cls: type) -> list[tuple[tuple, str, Any]]:
    """(location under spec, message, given value) for each sweep parameter the spec cannot take.

    A path must name a field present in this spec (dotted, relative to spec), outside the fixed sections;
    each value a distribution can produce must pass that field's validation (checked on a copy of the spec).
    """
    sweep = spec_model.sweep
    data = spec_model.model_dump(mode="json", exclude={"sweep"})
    out: list[tuple[tuple, str, Any]] = cadence_problems(spec_model) + cluster_size_problems(spec_model)
    for raw_path, dist in sweep.parameters.items():
        loc = ("sweep", "parameters", raw_path)
        path = canonical_path(raw_path, data)
        keys = path.split(".")
        if keys[0] in FIXED_SECTIONS:
            out.append(
                (
                    loc,
                    f"'{keys[0]}' cannot be swept; sweep parameters are fields outside "
                    f"{', '.join(FIXED_SECTIONS)}",
                    dist.model_dump(),
                )
            )
            continue
        found, current = _lookup(data, keys)
        if not found or isinstance(current, dict):
            what = "is a section, not a field" if found else "is not a field of this spec"
            parent_ok, parent = _lookup(data, keys[:-1])
            hint = ""
            if parent_ok and isinstance(parent, dict):
                close = difflib.get_close_matches(keys[-1], list(parent), n=1)
                hint = (
                    f"; did you mean '{'.'.join(keys[:-1] + close)}'?" if close else ""
                ) + f"; fields here: {', '.join(sorted(parent))}"
            out.append(
                (
                    loc,
                    f"spec.{path} {what} (paths are relative to spec, e.g. training.learning_rate, "
                    f"peft.r){hint}",
                    dist.model_dump(),
                )
            )
            continue
        for value in values_to_check(dist):
            trial = copy.deepcopy(data)
            target = trial
            for key in keys[:-1]:
                target = target[key]
            target[keys[-1]] = value
            try:
                spec_cls.model_validate(trial)
            except ValidationError as e:
                msg = e.errors(include_url=False)[0]["msg"].removeprefix("Value error, ")
                out.append((loc, f"spec.{path} rejects this value: {msg}", value))
                break
    return out
