"""Search algorithms for a sweep, all wrapped by the dollar budget guard.

- ``tpe`` / ``nsga2`` / ``random``: Ray Tune's ``OptunaSearch`` with the matching Optuna sampler,
  multi-objective when the spec has several objectives (metric and mode lists go to
  OptunaSearch, SPEC §8), its study kept in a durable Optuna ``JournalStorage`` file that only
  the driver writes (``study_storage``).
- ``grid``: every combination of the grid/choice values, in order (``ListSearcher``).

``BudgetGuard`` refuses to start a trial once spent + committed dollars (running trials count at
their per-trial budget) would pass the sweep budget; Tune then ends the sweep. A trial a scheduler
stopped reaches the wrapped searcher without its result (Optuna: PRUNED).
- ``seeds: auto`` (grid): ``replication.AdaptiveSeeds`` adds seeds where they can change the answer.
"""

from __future__ import annotations

import pickle
from typing import Any

from ray.tune.search import Searcher

from microdit.config.sweep import SweepSpec

REPLICATE = "replicate"  # the Tune config key of a trial's replicate index (spec ``seeds``)


def param_name(index: int) -> str:
    """Tune/Optuna parameter names: x0, x1, ... (dotted recipe keys are kept in the spec)."""
    return f"x{index}"


def optuna_space(spec: SweepSpec) -> dict[str, Any]:
    import optuna.distributions as od

    space = {}
    for i, p in enumerate(spec.space):
        if p.kind == "uniform":
            space[param_name(i)] = od.FloatDistribution(float(p.values[0]), float(p.values[1]))
        elif p.kind == "loguniform":
            space[param_name(i)] = od.FloatDistribution(float(p.values[0]), float(p.values[1]), log=True)
        elif p.kind == "int":
            space[param_name(i)] = od.IntDistribution(int(p.values[0]), int(p.values[1]))
        elif p.is_bundle:  # Optuna categoricals hold primitives: sample the option's index
            space[param_name(i)] = od.CategoricalDistribution(list(range(len(p.values))))
        else:
            space[param_name(i)] = od.CategoricalDistribution(list(p.values))
    return space


class ListSearcher(Searcher):
    """Suggests a fixed list of configs in order (the grid), then FINISHED."""

    def __init__(self, configs: list[dict[str, Any]], metric=None, mode=None):
        super().__init__(metric=metric, mode=mode)
        self.configs = configs
        self.next_index = 0
        self.assigned: dict[str, int] = {}

    def suggest(self, trial_id: str):
        if trial_id in self.assigned:
            return self.configs[self.assigned[trial_id]]
        if self.next_index >= len(self.configs):
            return Searcher.FINISHED
        self.assigned[trial_id] = self.next_index
        self.next_index += 1
        return self.configs[self.assigned[trial_id]]

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
        pass

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump({"next_index": self.next_index, "assigned": self.assigned}, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            state = pickle.load(f)
        self.next_index, self.assigned = state["next_index"], state["assigned"]


class BudgetGuard(Searcher):
    """Wraps a searcher; stops suggesting once spent + committed dollars would exceed the budget."""

    def __init__(self, searcher: Searcher, budget_dollars: float | None, trial_dollars: float):
        super().__init__(metric=searcher.metric, mode=searcher.mode)
        self.searcher = searcher
        self.budget = budget_dollars
        self.trial_dollars = trial_dollars
        self.spent = 0.0
        self.running: set[str] = set()
        self.refused = 0

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return self.searcher.set_search_properties(metric, mode, config, **spec)

    def suggest(self, trial_id: str):
        committed = (len(self.running) + 1) * self.trial_dollars
        if self.budget is not None and self.spent + committed > self.budget + 1e-12:
            self.refused += 1
            return Searcher.FINISHED if not self.running else None
        config = self.searcher.suggest(trial_id)
        if isinstance(config, dict):
            self.running.add(trial_id)
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self.running.discard(trial_id)
        self.spent += float((result or {}).get("cost_usd", self.trial_dollars if error else 0.0))
        if not error and result is not None and "budget_done" not in result:
            # stopped early (a scheduler): its last values are a cheap, unfinished point, so the searcher is
            # told nothing (OptunaSearch then marks the trial PRUNED, never a point of its front)
            result = None
        self.searcher.on_trial_complete(trial_id, result=result, error=error)

    # Tune saves wrapper state via get_state/set_state and the wrapped searcher via save/restore.
    def get_state(self) -> dict:
        return {"spent": self.spent, "running": set(self.running), "refused": self.refused,
                "budget": self.budget, "trial_dollars": self.trial_dollars}

    def set_state(self, state: dict) -> None:
        self.spent, self.running, self.refused = state["spent"], set(state["running"]), state["refused"]
        self.budget, self.trial_dollars = state["budget"], state["trial_dollars"]

    def save(self, checkpoint_path: str) -> None:
        self.searcher.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.searcher.restore(checkpoint_path)


def study_storage(sweep_dir: str):
    """The Optuna study's storage: a journal file that only the driver writes when the sweep lives on
    a local or shared disk; in memory when it lives on an object store (a journal needs a file
    system), where the study is saved with the searcher state in Tune's experiment checkpoint."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from microdit import storage

    if storage.is_uri(sweep_dir):
        return optuna.storages.InMemoryStorage()
    storage.makedirs(sweep_dir)
    return JournalStorage(JournalFileBackend(storage.join(sweep_dir, "optuna_journal.log")))


def grid_config(spec: SweepSpec, combo: dict[str, Any]) -> dict[str, Any]:
    """A grid configuration as Tune parameters (a bundle as its option's index)."""
    return {param_name(i): p.values.index(combo[p.key]) if p.is_bundle else combo[p.key]
            for i, p in enumerate(spec.space)}


def build_searcher(spec: SweepSpec, sweep_dir: str, trial_dollars: float,
                   tracking: tuple[str, str] | None = None) -> BudgetGuard:
    metrics = [o.metric for o in spec.objectives]
    modes = [o.mode for o in spec.objectives]
    metric = metrics if len(metrics) > 1 else metrics[0]
    mode = modes if len(modes) > 1 else modes[0]
    if spec.algorithm == "grid":
        configs = [{**grid_config(spec, combo), REPLICATE: replicate} for combo, replicate in spec.grid_trials()]
        if spec.adaptive_seeds:
            from microdit.sweep.replication import AdaptiveSeeds

            quality = spec.objectives[0]
            inner: Searcher = AdaptiveSeeds([grid_config(spec, combo) for combo in spec.grid()], quality.metric,
                                            quality.mode, max_seeds=spec.max_seeds, max_trials=spec.max_trials,
                                            replicate_key=REPLICATE, search_metric=metric, search_mode=mode,
                                            tracking=tracking)
        else:
            inner = ListSearcher(configs[: spec.max_trials], metric=metric, mode=mode)
    else:
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        sampler = {
            "tpe": lambda: optuna.samplers.TPESampler(seed=spec.seed, multivariate=True),
            "nsga2": lambda: optuna.samplers.NSGAIISampler(seed=spec.seed, population_size=max(4, spec.max_concurrent)),
            "random": lambda: optuna.samplers.RandomSampler(seed=spec.seed),
        }[spec.algorithm]()
        inner = OptunaSearch(space=optuna_space(spec), metric=metric, mode=mode, sampler=sampler,
                             study_name=spec.name, storage=study_storage(sweep_dir))
    return BudgetGuard(inner, spec.budget_dollars, trial_dollars)
