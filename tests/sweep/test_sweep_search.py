"""The sweep's search side without a cluster: Optuna's space, the searchers ``build_searcher`` makes,
the budget guard at its edges, and Tune's x0, x1... configs mapped back to recipe keys."""

from __future__ import annotations

import optuna
import optuna.distributions as od
import pytest
from optuna.storages.journal import JournalFileBackend
from ray.tune.search import Searcher

from microdit.config.sweep import load_sweep
from microdit.sweep.search import (
    REPLICATE,
    BudgetGuard,
    ListSearcher,
    build_searcher,
    optuna_space,
    param_name,
    study_storage,
)
from microdit.sweep.trial import trial_params, trial_values

NAIVE = {"model.masking": "naive", "model.mixer_depth": 0}
DEFERRED = {"model.masking": "deferred", "model.mixer_depth": 2}


def _spec(space: dict, algorithm: str, objectives: int = 2, **extra):
    return load_sweep({
        "name": "s", "base": "demo", "space": space,
        "objectives": [{"metric": "fid_128", "mode": "min"}, {"metric": "cost_usd", "mode": "min"}][:objectives],
        "trial_budget": {"images": 64}, "budget": {"dollars": 2.0, "max_trials": 3, "max_concurrent": 6},
        "search": {"algorithm": algorithm, "seed": 7}, **extra})


SAMPLED = {
    "phases[0].lr": {"loguniform": [1.0e-4, 3.0e-3]},
    "data.synthetic_fraction": {"uniform": [0.0, 1.0]},
    "model.num_experts": {"int": [2, 8]},
    "variant": {"choice": [NAIVE, DEFERRED]},
    "phases[0].mask_ratio": {"choice": [0.0, 0.5]},
}


def test_param_names_and_optuna_space():
    assert [param_name(i) for i in range(3)] == ["x0", "x1", "x2"]
    assert optuna_space(_spec(SAMPLED, "tpe")) == {
        "x0": od.FloatDistribution(1.0e-4, 3.0e-3, log=True),
        "x1": od.FloatDistribution(0.0, 1.0),
        "x2": od.IntDistribution(2, 8),
        "x3": od.CategoricalDistribution([0, 1]),  # a bundle: Optuna samples its option's index
        "x4": od.CategoricalDistribution([0.0, 0.5]),
    }


def test_trial_values_map_tune_configs_back_to_recipe_keys():
    spec = _spec(SAMPLED, "tpe")
    config = {"x0": 1e-3, "x1": 0.25, "x2": 5.0, "x3": 1, "x4": 0.5, REPLICATE: 0, "spec_dict": {}}
    values = trial_values(spec, config)
    assert values == {"phases[0].lr": 1e-3, "data.synthetic_fraction": 0.25, "model.num_experts": 5,
                      "variant": DEFERRED, "phases[0].mask_ratio": 0.5}
    assert isinstance(values["model.num_experts"], int)
    # a bundle given as its options' mapping (not an index) is kept as it is
    assert trial_values(spec, {**config, "x3": NAIVE})["variant"] == NAIVE


def test_grid_searcher_lists_every_configuration_and_replicate_in_order():
    spec = _spec({"variant": {"grid": [NAIVE, DEFERRED]}, "phases[0].mask_ratio": {"grid": [0.0, 0.5]}}, "grid",
                 seeds=2, budget={"dollars": 2.0, "max_trials": 7, "max_concurrent": 1})
    guard = build_searcher(spec, "/nowhere", trial_dollars=0.25)
    assert (guard.budget, guard.trial_dollars, guard.spent, guard.refused) == (2.0, 0.25, 0.0, 0)
    inner = guard.searcher
    assert isinstance(inner, ListSearcher) and (inner.metric, inner.mode) == (["fid_128", "cost_usd"], ["min", "min"])
    assert (guard.metric, guard.mode) == (inner.metric, inner.mode)
    configs = [guard.suggest(f"t{i}") for i in range(8)]
    assert configs[:7] == [{"x0": 0, "x1": 0.0, REPLICATE: 0}, {"x0": 0, "x1": 0.0, REPLICATE: 1},
                           {"x0": 0, "x1": 0.5, REPLICATE: 0}, {"x0": 0, "x1": 0.5, REPLICATE: 1},
                           {"x0": 1, "x1": 0.0, REPLICATE: 0}, {"x0": 1, "x1": 0.0, REPLICATE: 1},
                           {"x0": 1, "x1": 0.5, REPLICATE: 0}]  # max_trials 7 of 8
    assert configs[7] == Searcher.FINISHED
    assert [trial_values(spec, c) for c in configs[:3:2]] == [{"variant": NAIVE, "phases[0].mask_ratio": 0.0},
                                                             {"variant": NAIVE, "phases[0].mask_ratio": 0.5}]


def test_list_searcher_repeats_a_trials_config_and_ends_exactly_after_the_last():
    searcher = ListSearcher([{"x0": 1}, {"x0": 2}], metric="fid", mode="min")
    assert (searcher.metric, searcher.mode) == ("fid", "min")
    assert searcher.suggest("a") == {"x0": 1} and searcher.suggest("a") == {"x0": 1}  # asked again: same config
    assert searcher.suggest("b") == {"x0": 2}
    assert searcher.suggest("c") == Searcher.FINISHED and searcher.next_index == 2


def _first_suggestion(spec, tmp_path, name):
    guard = build_searcher(spec, str(tmp_path / name), trial_dollars=0.5)
    return guard, guard.suggest("t0")


@pytest.mark.parametrize(("algorithm", "sampler"), [("tpe", "TPESampler"), ("nsga2", "NSGAIISampler"),
                                                    ("random", "RandomSampler")])
def test_optuna_searchers_are_seeded_and_journaled(tmp_path, algorithm, sampler):
    spec = _spec(SAMPLED, algorithm)
    guard, first = _first_suggestion(spec, tmp_path, "a")
    inner = guard.searcher
    assert type(inner._sampler).__name__ == sampler and (guard.budget, guard.trial_dollars) == (2.0, 0.5)
    assert (inner.metric, inner.mode) == (["fid_128", "cost_usd"], ["min", "min"])  # multi-objective lists
    assert set(first) == {"x0", "x1", "x2", "x3", "x4"} and 2 <= first["x2"] <= 8 and first["x3"] in (0, 1)
    # the study lives in the sweep's folder, named after the sweep (a resumed sweep finds it again)
    journal = optuna.storages.JournalStorage(JournalFileBackend(str(tmp_path / "a" / "optuna_journal.log")))
    assert optuna.get_all_study_names(journal) == ["s"]
    # the spec's seed decides the samples: the same seed again gives the same first trial, another seed not
    assert _first_suggestion(spec, tmp_path, "b")[1] == first
    other = _spec(SAMPLED, algorithm, search={"algorithm": algorithm, "seed": 8})
    assert _first_suggestion(other, tmp_path, "c")[1] != first


def test_optuna_sampler_settings_and_a_single_objective(tmp_path):
    guard = build_searcher(_spec(SAMPLED, "nsga2"), str(tmp_path / "n"), trial_dollars=0.5)
    assert guard.searcher._sampler._population_size == 6  # max(4, max_concurrent 6)
    small = _spec(SAMPLED, "nsga2", budget={"max_trials": 3, "max_concurrent": 2})
    assert build_searcher(small, str(tmp_path / "m"), 0.5).searcher._sampler._population_size == 4
    tpe = build_searcher(_spec(SAMPLED, "tpe", objectives=1), str(tmp_path / "t"), trial_dollars=0.5)
    assert tpe.searcher._sampler._multivariate is True
    assert (tpe.searcher.metric, tpe.searcher.mode) == ("fid_128", "min")  # one objective: plain strings


def test_study_storage_is_a_journal_file_locally_and_in_memory_on_object_stores(tmp_path):
    storage = study_storage(str(tmp_path / "sweep"))
    assert isinstance(storage, optuna.storages.JournalStorage) and (tmp_path / "sweep").is_dir()
    optuna.create_study(storage=storage, study_name="s")
    assert (tmp_path / "sweep" / "optuna_journal.log").stat().st_size > 0
    assert isinstance(study_storage("s3://bucket/sweeps/s"), optuna.storages.InMemoryStorage)


class Recording(ListSearcher):
    """A list searcher that records what the guard passes on (Tune's calls reach the wrapped searcher)."""

    def __init__(self, configs):
        super().__init__(configs, metric="fid", mode="min")
        self.calls: list[tuple] = []

    def on_trial_result(self, trial_id, result):
        self.calls.append(("result", trial_id, result))

    def on_trial_complete(self, trial_id, result=None, error=False):
        self.calls.append(("complete", trial_id, result, error))

    def set_search_properties(self, metric, mode, config, **spec):
        self.calls.append(("properties", metric, mode, config, spec))
        return True


def test_budget_guard_passes_results_on_and_charges_what_was_reported():
    inner = Recording([{"x0": i} for i in range(4)])
    guard = BudgetGuard(inner, budget_dollars=None, trial_dollars=0.4)
    assert (guard.metric, guard.mode) == ("fid", "min")
    assert guard.set_search_properties("m", "max", {"a": 1}, extra=2) is True
    guard.suggest("a")
    guard.on_trial_result("a", {"loss": 0.5})
    guard.on_trial_complete("a", {"cost_usd": 0.25, "fid": 9.0, "budget_done": 1.0}, error=False)
    guard.suggest("b")
    # stopped by a scheduler (no budget_done): charged what it reported, its cheap unfinished values are
    # kept from the searcher (Optuna: PRUNED, never on its front)
    guard.on_trial_complete("b", {"loss": 0.5, "fid": 20.0, "cost_usd": 0.05})
    guard.suggest("c")
    guard.on_trial_complete("c", None)
    assert guard.spent == 0.3 and guard.running == set()
    assert inner.calls == [("properties", "m", "max", {"a": 1}, {"extra": 2}), ("result", "a", {"loss": 0.5}),
                           ("complete", "a", {"cost_usd": 0.25, "fid": 9.0, "budget_done": 1.0}, False),
                           ("complete", "b", None, False), ("complete", "c", None, False)]
    guard.suggest("d")
    guard.on_trial_complete("d", None, error=True)  # errored without a cost: its whole budget
    assert guard.spent == 0.3 + 0.4 and inner.calls[-1] == ("complete", "d", None, True)
    assert guard.suggest("e") == Searcher.FINISHED  # no budget: the list's end ends the sweep
    assert guard.refused == 0


def test_budget_guard_tolerates_rounding_at_the_budget():
    # 0.1 spent + 0.2 committed = 0.30000000000000004 in floating point: still within a $0.30 budget
    guard = BudgetGuard(ListSearcher([{"x0": i} for i in range(3)]), budget_dollars=0.3, trial_dollars=0.2)
    guard.suggest("a")
    guard.on_trial_complete("a", {"cost_usd": 0.1})
    assert guard.suggest("b") == {"x0": 1}
    # the tolerance is 1e-12: a commitment of exactly budget + 1e-12 starts, one just above it does not
    assert BudgetGuard(ListSearcher([{"x0": 0}]), 1.0, 1.0 + 1e-12).suggest("a") == {"x0": 0}
    assert BudgetGuard(ListSearcher([{"x0": 0}]), 1.0, 1.0 + 1e-11).suggest("a") == Searcher.FINISHED


def test_trial_params_name_swept_values_as_mlflow_allows():
    values = {"phases[0].mask_ratio": 0.75, "variant": {"model.masking": "naive", "phases[1].lr": 1e-4}}
    assert trial_params(values, replicate=0, seeds=1) == {
        "sweep.phases.0.mask_ratio": 0.75, "sweep.variant": "model.masking=naive,phases[1].lr=0.0001"}
    assert trial_params(values, replicate=1, seeds=2)["sweep.replicate"] == 1  # several seeds: which one
    assert trial_params({}, replicate=0, seeds=2) == {"sweep.replicate": 0}


def test_budget_guard_state_is_a_snapshot_that_restores_every_field():
    guard = BudgetGuard(ListSearcher([{"x0": i} for i in range(4)]), budget_dollars=1.9, trial_dollars=0.75)
    guard.suggest("a")
    guard.suggest("b")
    guard.on_trial_complete("a", {"cost_usd": 0.5})
    assert guard.suggest("c") is None  # 0.5 spent + 2 x 0.75 committed > 1.9: wait for b
    state = guard.get_state()
    guard.on_trial_complete("b", {"cost_usd": 0.25})
    assert state == {"spent": 0.5, "running": {"b"}, "refused": 1, "budget": 1.9, "trial_dollars": 0.75}
    fresh = BudgetGuard(ListSearcher([]), budget_dollars=None, trial_dollars=0.0)
    fresh.set_state(state)
    assert (fresh.spent, fresh.running, fresh.refused, fresh.budget, fresh.trial_dollars) == (0.5, {"b"}, 1, 1.9, 0.75)
    state["running"].add("z")
    assert fresh.running == {"b"}  # restored as its own set


def test_a_stopped_trial_is_pruned_in_the_optuna_study(tmp_path):
    """Optuna hears of a trial a scheduler stopped as PRUNED (its early, cheap values are no point of
    its front); a finished one as COMPLETE with its objectives."""
    spec = _spec(SAMPLED, "nsga2")
    guard = build_searcher(spec, str(tmp_path), trial_dollars=0.5)
    guard.suggest("done")
    guard.suggest("stopped")
    guard.on_trial_complete("done", {"fid_128": 210.0, "cost_usd": 0.4, "budget_done": 1.0})
    guard.on_trial_complete("stopped", {"fid_128": 300.0, "cost_usd": 0.1, "milestone_target_usd": 0.1})
    states = {t.values[0] if t.values else None: t.state.name for t in guard.searcher._ot_study.trials}
    assert states == {210.0: "COMPLETE", None: "PRUNED"}
    assert guard.spent == 0.5
