"""Sweep specs (``search_spaces/*.yaml``): a base recipe, a space over dotted recipe keys,
objectives, budgets, scheduler and search algorithm. Validated with errors naming the key.

Format (every top-level key below; unknown keys are errors)::

    name: quickstart
    base: demo                    # recipe name / path, or an inline recipe mapping
    overrides: {tracking.log_every_steps: 5}    # applied to every trial before sampling
    space:                        # dotted recipe key -> one distribution
      phases[0].mask_ratio: {choice: [0.0, 0.5, 0.75]}
      model.mixer_depth: {grid: [1, 2]}
      phases[0].lr: {loguniform: [1.0e-4, 3.0e-3]}
      data.synthetic_fraction: {uniform: [0.0, 1.0]}
      model.num_experts: {int: [2, 8]}
      variant: {grid: [{model.masking: none, model.mixer_depth: 0}, {model.masking: naive, model.mixer_depth: 0}]}
    objectives: [{metric: fid_256, mode: min}, {metric: cost_usd, mode: min}]
    trial_budget: {dollars: 0.002}            # or {images: 20000}: every trial's length
    budget: {dollars: 0.05, max_trials: 6, max_concurrent: 1}
    scheduler: {type: none}                   # or {type: asha, metric: loss, mode: min, grace_period: 2}
    search: {algorithm: tpe, seed: 0}         # tpe | nsga2 | random | grid
    evaluation: {reference: demo_real_heldout, num_samples: 256, steps: 18, guidance: 3.0}

A parameter whose options are all mappings is a *bundle*: its key is a free label and each
option is a set of dotted overrides applied together (for variants whose keys depend on each
other, e.g. a masking strategy with its mixer depth).

``SweepSpec`` is a ``StrictModel`` (``config/base.py``): errors read ``sweep <file>:
budget.max_trials=0: Input should be greater than or equal to 1``. The base recipe is resolved
(file read, ``overrides`` applied) while validating, so ``spec.to_dict()`` is a self-contained
spec that ``load_sweep`` accepts again, and ``spec.fingerprint()`` is what a resumed sweep
compares against the spec it started with (``spec_changes``).
"""

from __future__ import annotations

import itertools
import math
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)

from microdit.config.base import FieldError, StrictModel, need, validate_config
from microdit.config.overrides import apply_overrides, config_changes, get_path
from microdit.config.recipe import load_recipe_dict
from microdit.config.shipped import SWEEPS, resolve
from microdit.config.sweep_sections import Evaluation, Finetune, Mode, Scheduler  # noqa: F401 (re-exported)
from microdit.errors import ConfigError

Distribution = Literal["uniform", "loguniform", "int", "choice", "grid"]
Algorithm = Literal["tpe", "nsga2", "random", "grid"]
DISTRIBUTIONS: tuple[str, ...] = get_args(Distribution)
ALGORITHMS: tuple[str, ...] = get_args(Algorithm)
NonEmpty = Annotated[str, Field(min_length=1)]


class Parameter(StrictModel):
    """One swept key: ``kind`` over ``values`` ((low, high) for uniform / loguniform / int)."""

    model_config = ConfigDict(**StrictModel.model_config, frozen=True)

    key: str  # dotted recipe path (a free label for a bundle)
    kind: Distribution
    values: tuple[Any, ...]  # (low, high) or the options

    def grid_values(self) -> tuple:
        return self.values if self.kind in ("grid", "choice") else ()

    @property
    def is_bundle(self) -> bool:
        return self.kind in ("grid", "choice") and all(isinstance(v, dict) for v in self.values)


class Objective(StrictModel):
    metric: NonEmpty
    mode: Mode


class TrialBudget(StrictModel):
    """Every trial's length: exactly one of dollars or images."""

    dollars: PositiveFloat | None = None
    images: PositiveInt | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> TrialBudget:
        if (self.dollars is None) == (self.images is None):
            raise ValueError("must be exactly one of {dollars: X} or {images: N}")
        return self


class Budget(StrictModel):
    dollars: PositiveFloat | None = None  # the whole sweep; the budget guard starts no trial past it
    max_trials: PositiveInt = 8
    max_concurrent: PositiveInt = 1


class Search(StrictModel):
    algorithm: Algorithm = "tpe"  # default when omitted: nsga2 with several objectives, else tpe
    seed: int = 0


def _number(value: Any) -> float:
    """A bound: a number, or a numeric string (YAML 1.1 reads ``1e-4`` as a string)."""
    if isinstance(value, bool):
        raise ValueError
    number = float(value)  # ValueError / TypeError for anything else
    if not math.isfinite(number):
        raise ValueError
    return number


def _parameter(key: str, spec: Any, base: dict[str, Any] | None) -> Parameter:
    if not isinstance(spec, dict) or len(spec) != 1:
        raise FieldError(key, spec, f"must be one mapping like {{choice: [...]}}; kinds: {', '.join(DISTRIBUTIONS)}")
    kind, values = next(iter(spec.items()))
    if kind not in DISTRIBUTIONS:
        raise FieldError(key, kind, f"unknown distribution; allowed: {', '.join(DISTRIBUTIONS)}")
    if not isinstance(values, list) or not values:
        raise FieldError(f"{key}.{kind}", values, "must be a non-empty list")
    bundle = kind in ("grid", "choice") and all(isinstance(v, dict) for v in values)
    if not bundle and base is not None and not key.startswith("model."):  # model.* may add a field the size leaves default
        try:
            get_path(base, key)
        except ConfigError:
            raise FieldError(key, spec, "no such key in the base recipe (after overrides)") from None
    if kind in ("uniform", "loguniform", "int"):
        try:
            low, high = (_number(v) for v in values)
        except (ValueError, TypeError):
            raise FieldError(f"{key}.{kind}", values, "must be [low, high] numbers with low < high") from None
        if low >= high:
            raise FieldError(f"{key}.{kind}", values, "must be [low, high] numbers with low < high")
        if kind == "loguniform" and low <= 0:
            raise FieldError(f"{key}.loguniform", values, "low must be > 0")
        if kind == "int":
            if not (low.is_integer() and high.is_integer()):
                raise FieldError(f"{key}.int", values, "bounds must be integers")
            low, high = int(low), int(high)
        values = [low, high]
    return Parameter(key=key, kind=kind, values=tuple(values))


class SweepSpec(StrictModel):
    """A validated sweep; see the module docstring for the YAML format."""

    name: NonEmpty
    description: str | None = None
    base: dict[str, Any]  # the resolved base recipe (overrides applied), before sampling
    overrides: dict[str, Any] = Field(default_factory=dict, exclude=True)  # already applied to base
    space: list[Parameter]  # YAML: a mapping dotted key -> {kind: values}
    objectives: Annotated[list[Objective], Field(min_length=1)]
    trial_budget: TrialBudget
    budget: Budget = Field(default_factory=Budget)
    scheduler: Scheduler = Field(default_factory=Scheduler)
    search: Search = Field(default_factory=Search)
    evaluation: Evaluation = Field(default_factory=Evaluation)
    finetune: Finetune | None = None  # the paper's protocol: an unmasked fine-tune ends every trial
    # replicates per configuration (seed, seed+1, ...): the report shows mean ± std; ``auto`` (grid): one
    # seed each, then more only for configurations within noise of the best, up to max_seeds
    seeds: PositiveInt | Literal["auto"] = 1
    max_seeds: Annotated[int, Field(ge=2)] = 3
    # a trial whose process or node is lost is rerun this many times, resuming from its last checkpoint;
    # a trial whose own code raises is not rerun (it fails once and is reported)
    trial_retries: Annotated[int, Field(ge=0)] = 2
    mlflow_uri: str | None = None
    experiment: NonEmpty = "microdit-sweeps"
    storage_path: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _resolve(cls, data: Any) -> Any:
        """Null sections -> defaults; base -> the recipe mapping with overrides; default algorithm."""
        if not isinstance(data, dict):
            return data
        data = {k: v for k, v in data.items()
                if not (v is None and k in ("overrides", "budget", "scheduler", "search", "evaluation", "seeds"))}
        if isinstance(data.get("base"), (str, dict)):
            try:
                base = load_recipe_dict(data["base"])
            except ConfigError as err:
                raise FieldError("base", data["base"], str(err)) from None
            overrides = data.get("overrides") or {}
            if isinstance(overrides, dict):
                try:
                    base = apply_overrides(base, overrides)
                except ConfigError as err:
                    raise FieldError("overrides", overrides, str(err)) from None
            data["base"] = base
        scheduler, objectives = data.get("scheduler"), data.get("objectives")
        if isinstance(scheduler, dict) and scheduler.get("type") == "cost_asha" and isinstance(objectives, list) \
                and objectives and isinstance(objectives[0], dict):  # prune on the first objective by default
            data["scheduler"] = {"metric": objectives[0].get("metric"), "mode": objectives[0].get("mode"), **scheduler}
        search = data.get("search", {})
        if isinstance(search, dict) and "algorithm" not in search:
            several = isinstance(data.get("objectives"), list) and len(data["objectives"]) > 1
            data["search"] = {**search, "algorithm": "nsga2" if several else "tpe"}
        return data

    @field_validator("space", mode="before")
    @classmethod
    def _space(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, list) and value and all(isinstance(p, Parameter) for p in value):
            return value
        if not isinstance(value, dict) or not value:
            raise ValueError("must map dotted recipe keys to distributions, e.g. {phases[0].lr: {loguniform: [1e-4, 3e-3]}}")
        base = info.data.get("base")
        return [_parameter(str(key), spec, base) for key, spec in value.items()]

    @field_serializer("space")
    def _space_mapping(self, space: list[Parameter]) -> dict[str, Any]:
        return {p.key: {p.kind: list(p.values)} for p in space}

    @model_validator(mode="after")
    def _consistent(self) -> SweepSpec:
        if self.algorithm == "grid":
            bad = [p.key for p in self.space if p.kind not in ("grid", "choice")]
            need(not bad, "search.algorithm", "grid", f"needs grid/choice values for every key; not for {bad}")
        else:
            need(not any(p.kind == "grid" for p in self.space), "search.algorithm", self.algorithm,
                 "`grid` values need search.algorithm: grid (Optuna samples; use choice)")
            need(self.seeds == 1, "seeds", self.seeds, "replicates need search.algorithm: grid (each "
                 "configuration is then trained once per seed); with Optuna use seeds: 1")
        if self.scheduler.type == "cost_asha":
            metric = self.scheduler.metric or ""
            need(metric.startswith("fid_") or metric == "clip_score", "scheduler.metric", metric,
                 "cost_asha prunes on a milestone reading: a fid_N objective or clip_score (rungs are at equal "
                 "dollars, so cost itself is not a pruning metric)")
            need(self.trial_dollars is not None or self.scheduler.rungs is not None, "scheduler.rungs", None,
                 "with an image trial budget the rungs' count is needed (a trial's dollars are not known ahead)")
            unknown = [k for k in self.scheduler.group_by if k not in [p.key for p in self.space]]
            need(not unknown, "scheduler.group_by", unknown, f"must name swept keys: {[p.key for p in self.space]}")
            need(bool(self.scheduler.rung_dollars(self.trial_dollars)), "scheduler.grace_dollars",
                 self.scheduler.grace_dollars, f"must be below the trial budget ({self.trial_dollars}) to give a rung")
        _validate_trials(self)
        return self

    # ------------------------------------------------------------------ flat views
    @property
    def trial_dollars(self) -> float | None:
        return self.trial_budget.dollars

    @property
    def trial_images(self) -> int | None:
        return self.trial_budget.images

    @property
    def budget_dollars(self) -> float | None:
        return self.budget.dollars

    @property
    def max_trials(self) -> int:
        return self.budget.max_trials

    @property
    def max_concurrent(self) -> int:
        return self.budget.max_concurrent

    @property
    def algorithm(self) -> str:
        return self.search.algorithm

    @property
    def seed(self) -> int:
        return self.search.seed

    @property
    def is_grid(self) -> bool:
        return self.algorithm == "grid"

    # ------------------------------------------------------------------ trials
    def grid(self) -> list[dict[str, Any]]:
        """Every combination of grid/choice values (the configurations of a grid search)."""
        keys = [p.key for p in self.space]
        return [dict(zip(keys, combo)) for combo in itertools.product(*(p.grid_values() for p in self.space))]

    @property
    def adaptive_seeds(self) -> bool:
        return self.seeds == "auto"

    def grid_trials(self) -> list[tuple[dict[str, Any], int]]:
        """(configuration, replicate) for every trial of a grid search: each configuration ``seeds`` times
        (``auto``: once; ``microdit.sweep.replication`` adds seeds as results come)."""
        seeds = 1 if self.adaptive_seeds else self.seeds
        return [(combo, replicate) for combo in self.grid() for replicate in range(seeds)]

    def num_trials(self) -> int:
        """Trials Tune may start (``seeds: auto``: an upper bound, every configuration at max_seeds)."""
        if not self.is_grid:
            return self.max_trials
        planned = len(self.grid()) * self.max_seeds if self.adaptive_seeds else len(self.grid_trials())
        return min(planned, self.max_trials)

    def milestones_dollars(self) -> list[float]:
        """The dollar milestones every trial is evaluated at: the scheduler's rungs and ``at_dollars``."""
        return sorted({*self.scheduler.rung_dollars(self.trial_dollars), *self.evaluation.at_dollars})

    def trial_evaluation(self, base: dict[str, Any] | None) -> dict[str, Any] | None:
        """The trial recipe's ``evaluation`` section when the spec asks for milestones: the trials' final
        protocol (the same FID at every point of the curve) at the milestones; else the base's own."""
        at_dollars, at_fraction = self.milestones_dollars(), sorted(set(self.evaluation.at_fraction))
        if not (at_dollars or at_fraction):
            return base
        protocol = final_evaluation(self)
        return {"at_phase_end": False, **(base or {}), "reference": protocol.reference,
                "num_samples": protocol.num_samples, "steps": protocol.steps, "guidance": protocol.guidance,
                "seed": protocol.seed, "clip_model": protocol.clip_model, "at_dollars": at_dollars,
                "at_fraction": at_fraction}

    def trial_recipe(self, values: dict[str, Any], trial_name: str, replicate: int = 0) -> dict[str, Any]:
        """The base recipe with the sampled values, the replicate's seeds, the fine-tune and the
        per-trial budget applied."""
        flat: dict[str, Any] = {}
        for key, value in values.items():
            flat.update(value if isinstance(value, dict) else {key: value})
        recipe = apply_overrides(self.base, flat)
        recipe["name"] = trial_name
        if replicate:  # another initialisation, noise stream and data order
            recipe["seed"] = int(recipe.get("seed", 0)) + replicate
            recipe["data"] = {**recipe.get("data", {}), "seed": int(recipe.get("data", {}).get("seed", 0)) + replicate}
        unit = "dollars" if self.trial_dollars is not None else "images"
        budget = self.trial_dollars if self.trial_dollars is not None else self.trial_images
        if self.finetune is not None:
            try:
                recipe["phases"] = self.finetune.apply(list(recipe["phases"]), unit, budget)
            except FieldError as err:
                raise FieldError(f"finetune.{err.field}", err.value, err.msg) from None
        recipe["max_dollars" if unit == "dollars" else "max_images"] = budget
        evaluation = self.trial_evaluation(recipe.get("evaluation"))
        if evaluation is not None:
            recipe["evaluation"] = evaluation
        return recipe

    def fingerprint(self) -> dict[str, Any]:
        """The resolved spec as plain data (``to_dict`` without ``description``), compared on resume."""
        data = self.to_dict()
        data.pop("description", None)
        return data


def final_evaluation(spec: SweepSpec):
    """The trials' evaluation protocol (``EvaluationConfig``): the demo reference unless the spec names one."""
    from microdit.evaluate.pipeline import EvaluationConfig

    return EvaluationConfig(**{"reference": "demo_real_heldout", **spec.evaluation.overrides()})


def value_label(value: Any) -> Any:
    """A swept value as one label: a bundle's overrides with their full dotted keys, as the spec
    writes them ('model.masking=naive,phases[0].mask_ratio=0.75'), so two members that end in the
    same name never read alike; any other value as is."""
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    return value


def load_sweep(ref: str | dict[str, Any]) -> SweepSpec:
    """Read and validate a sweep spec (a path, a shipped name such as quickstart, or a mapping)."""
    if isinstance(ref, dict):
        data, where = ref, "<inline>"
    else:
        path = resolve(ref, SWEEPS)
        try:
            data, where = yaml.safe_load(path.read_text()), str(path)
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"sweep {where}: expected a mapping")
    try:
        return validate_config(SweepSpec, data)
    except ConfigError as err:
        raise ConfigError(f"sweep {where}: {err}") from None


def _validate_trials(spec: SweepSpec) -> None:
    """Every corner of the space must give a valid recipe: fail now, not in trial 5."""
    from microdit.config.recipe import RecipeConfig

    corners: list[list[tuple[str, Any]]] = []
    for p in spec.space:
        options = p.values if p.kind in ("grid", "choice") else (p.values[0], p.values[1])
        corners.append([(p.key, v) for v in options])
    for combo in itertools.islice(itertools.product(*corners), 256):
        values = dict(combo)
        try:
            RecipeConfig.from_dict(spec.trial_recipe(values, "validate"))
        except ConfigError as err:
            raise ConfigError(f"space gives an invalid recipe for {values}: {err}") from None


def spec_changes(old: Any, new: Any) -> list[tuple[str, Any, Any]]:
    """(dotted key, old, new) for every difference between two fingerprints: a swept key is
    compared as a whole (``space.phases[0].mask_ratio``), the rest item by item (``base.phases[0].lr``)."""
    return config_changes(old, new, whole=lambda path: len(path) == 2 and path[0] == "space")
