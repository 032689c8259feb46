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
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from microdit.config.overrides import apply_overrides, get_path
from microdit.config.recipe import load_recipe_dict
from microdit.errors import ConfigError

DISTRIBUTIONS = ("uniform", "loguniform", "int", "choice", "grid")
ALGORITHMS = ("tpe", "nsga2", "random", "grid")
SCHEDULERS = ("none", "asha")
TOP_LEVEL = ("name", "base", "overrides", "space", "objectives", "trial_budget", "budget", "scheduler", "search",
             "evaluation", "mlflow_uri", "experiment", "storage_path", "description")
SWEEP_DIR = Path(__file__).resolve().parents[3] / "search_spaces"


@dataclass(frozen=True)
class Parameter:
    key: str  # dotted recipe path
    kind: str  # uniform | loguniform | int | choice | grid
    values: tuple  # (low, high) or the options

    def grid_values(self) -> tuple:
        return self.values if self.kind in ("grid", "choice") else ()

    @property
    def is_bundle(self) -> bool:
        return self.kind in ("grid", "choice") and all(isinstance(v, dict) for v in self.values)


@dataclass(frozen=True)
class Objective:
    metric: str
    mode: str


@dataclass
class SweepSpec:
    name: str
    base: dict[str, Any]  # the resolved base recipe (a dict, before sampling)
    space: list[Parameter]
    objectives: list[Objective]
    trial_dollars: float | None = None
    trial_images: int | None = None
    budget_dollars: float | None = None
    max_trials: int = 8
    max_concurrent: int = 1
    scheduler: dict[str, Any] = field(default_factory=lambda: {"type": "none"})
    algorithm: str = "tpe"
    seed: int = 0
    evaluation: dict[str, Any] = field(default_factory=dict)
    mlflow_uri: str | None = None
    experiment: str = "microdit-sweeps"
    storage_path: str | None = None

    @property
    def is_grid(self) -> bool:
        return self.algorithm == "grid"

    def grid(self) -> list[dict[str, Any]]:
        """Every combination of grid/choice values (the trials of a grid search)."""
        keys = [p.key for p in self.space]
        return [dict(zip(keys, combo)) for combo in itertools.product(*(p.grid_values() for p in self.space))]

    def num_trials(self) -> int:
        return min(len(self.grid()), self.max_trials) if self.is_grid else self.max_trials

    def trial_recipe(self, values: dict[str, Any], trial_name: str) -> dict[str, Any]:
        """The base recipe with the sampled values and the per-trial budget applied."""
        flat: dict[str, Any] = {}
        for key, value in values.items():
            flat.update(value if isinstance(value, dict) else {key: value})
        recipe = apply_overrides(self.base, flat)
        recipe["name"] = trial_name
        if self.trial_dollars is not None:
            recipe["max_dollars"] = self.trial_dollars
        if self.trial_images is not None:
            recipe["max_images"] = self.trial_images
        return recipe

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _fail(key: str, value: Any, allowed: str) -> None:
    raise ConfigError(f"sweep {key}={value!r}: {allowed}")


def _parameter(key: str, spec: Any, base: dict[str, Any]) -> Parameter:
    if not isinstance(spec, dict) or len(spec) != 1:
        _fail(f"space.{key}", spec, f"must be one mapping like {{choice: [...]}}; kinds: {', '.join(DISTRIBUTIONS)}")
    kind, values = next(iter(spec.items()))
    if kind not in DISTRIBUTIONS:
        _fail(f"space.{key}", kind, f"unknown distribution; allowed: {', '.join(DISTRIBUTIONS)}")
    if not isinstance(values, list) or not values:
        _fail(f"space.{key}.{kind}", values, "must be a non-empty list")
    bundle = kind in ("grid", "choice") and all(isinstance(v, dict) for v in values)
    if not bundle and not key.startswith("model."):  # model.* may add a field the size leaves default
        get_path(base, key)
    if kind in ("uniform", "loguniform", "int"):
        if len(values) != 2 or not all(isinstance(v, (int, float)) for v in values) or values[0] >= values[1]:
            _fail(f"space.{key}.{kind}", values, "must be [low, high] numbers with low < high")
        if kind == "loguniform" and values[0] <= 0:
            _fail(f"space.{key}.loguniform", values, "low must be > 0")
        if kind == "int" and not all(float(v).is_integer() for v in values):
            _fail(f"space.{key}.int", values, "bounds must be integers")
    return Parameter(key, kind, tuple(values))


def load_sweep(ref: str | dict[str, Any]) -> SweepSpec:
    """Read and validate a sweep spec (a path, a name under search_spaces/, or a mapping)."""
    if isinstance(ref, dict):
        data, where = ref, "<inline>"
    else:
        path = Path(ref)
        if not path.exists() and (SWEEP_DIR / f"{ref}.yaml").exists():
            path = SWEEP_DIR / f"{ref}.yaml"
        if not path.exists():
            raise ConfigError(f"sweep spec {ref!r}: no such file (shipped specs live in {SWEEP_DIR})")
        try:
            data, where = yaml.safe_load(path.read_text()), str(path)
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"sweep {where}: expected a mapping")
    unknown = sorted(set(data) - set(TOP_LEVEL))
    if unknown:
        _fail("keys", unknown, f"unknown; allowed: {', '.join(TOP_LEVEL)}")
    for required in ("name", "base", "space", "objectives"):
        if required not in data:
            _fail(required, None, "is required")
    base = load_recipe_dict(data["base"], data.get("overrides") or {})
    if not isinstance(data["space"], dict) or not data["space"]:
        _fail("space", data["space"], "must map dotted recipe keys to distributions")
    space = [_parameter(k, v, base) for k, v in data["space"].items()]

    objectives = []
    for i, item in enumerate(data["objectives"] if isinstance(data["objectives"], list) else [None]):
        if not isinstance(item, dict) or set(item) != {"metric", "mode"} or item.get("mode") not in ("min", "max"):
            _fail(f"objectives[{i}]", item, "must be {metric: NAME, mode: min|max}")
        objectives.append(Objective(str(item["metric"]), item["mode"]))

    trial_budget = data.get("trial_budget") or {}
    if set(trial_budget) - {"dollars", "images"} or len(trial_budget) != 1:
        _fail("trial_budget", trial_budget, "must be exactly one of {dollars: X} or {images: N}")
    for key, value in trial_budget.items():
        if not isinstance(value, (int, float)) or value <= 0:
            _fail(f"trial_budget.{key}", value, "must be a number > 0")

    budget = data.get("budget") or {}
    if set(budget) - {"dollars", "max_trials", "max_concurrent"}:
        _fail("budget", sorted(budget), "allowed keys: dollars, max_trials, max_concurrent")
    max_trials = budget.get("max_trials", 8)
    max_concurrent = budget.get("max_concurrent", 1)
    if not isinstance(max_trials, int) or max_trials < 1:
        _fail("budget.max_trials", max_trials, "must be an integer >= 1")
    if not isinstance(max_concurrent, int) or max_concurrent < 1:
        _fail("budget.max_concurrent", max_concurrent, "must be an integer >= 1")
    if budget.get("dollars") is not None and (not isinstance(budget["dollars"], (int, float)) or budget["dollars"] <= 0):
        _fail("budget.dollars", budget["dollars"], "must be a number > 0")

    scheduler = dict(data.get("scheduler") or {"type": "none"})
    if scheduler.get("type") not in SCHEDULERS:
        _fail("scheduler.type", scheduler.get("type"), f"allowed: {', '.join(SCHEDULERS)}")
    if scheduler["type"] == "asha":
        allowed = {"type", "metric", "mode", "grace_period", "reduction_factor", "max_t"}
        if set(scheduler) - allowed:
            _fail("scheduler", sorted(set(scheduler) - allowed), f"unknown keys; allowed: {sorted(allowed)}")
        if "metric" not in scheduler or scheduler.get("mode", "min") not in ("min", "max"):
            _fail("scheduler", scheduler, "asha needs metric (an intermediate metric, e.g. loss) and mode min|max")

    search = dict(data.get("search") or {})
    algorithm = search.get("algorithm", "nsga2" if len(objectives) > 1 else "tpe")
    if algorithm not in ALGORITHMS:
        _fail("search.algorithm", algorithm, f"allowed: {', '.join(ALGORITHMS)}")
    if set(search) - {"algorithm", "seed"}:
        _fail("search", sorted(search), "allowed keys: algorithm, seed")
    if algorithm == "grid":
        bad = [p.key for p in space if p.kind not in ("grid", "choice")]
        if bad:
            _fail("search.algorithm", "grid", f"needs grid/choice values for every key; not for {bad}")
    elif any(p.kind == "grid" for p in space) and algorithm != "grid":
        _fail("search.algorithm", algorithm, "`grid` values need search.algorithm: grid (Optuna samples; use choice)")

    evaluation = dict(data.get("evaluation") or {})
    allowed_eval = {"reference", "num_samples", "steps", "guidance", "seed", "clip_model"}
    if set(evaluation) - allowed_eval:
        _fail("evaluation", sorted(set(evaluation) - allowed_eval), f"unknown keys; allowed: {sorted(allowed_eval)}")
    spec = SweepSpec(
        name=str(data["name"]), base=base, space=space, objectives=objectives,
        trial_dollars=trial_budget.get("dollars"), trial_images=trial_budget.get("images"),
        budget_dollars=budget.get("dollars"), max_trials=max_trials, max_concurrent=max_concurrent,
        scheduler=scheduler, algorithm=algorithm, seed=int(search.get("seed", 0)), evaluation=evaluation,
        mlflow_uri=data.get("mlflow_uri"), experiment=data.get("experiment", "microdit-sweeps"),
        storage_path=data.get("storage_path"),
    )
    _validate_trials(spec)
    return spec


def _validate_trials(spec: SweepSpec) -> None:
    """Every corner of the space must give a valid recipe: fail now, not in trial 5."""
    from microdit.config.recipe import RecipeConfig

    corners: list[dict[str, Any]] = []
    for p in spec.space:
        options = p.values if p.kind in ("grid", "choice") else (p.values[0], p.values[1])
        if p.kind == "int":
            options = tuple(int(v) for v in options)
        corners.append([(p.key, v) for v in options])
    for combo in itertools.islice(itertools.product(*corners), 256):
        values = dict(combo)
        try:
            RecipeConfig.from_dict(spec.trial_recipe(values, "validate"))
        except ConfigError as err:
            raise ConfigError(f"sweep space gives an invalid recipe for {values}: {err}") from None
