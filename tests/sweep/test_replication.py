"""``seeds: auto`` (``microdit.sweep.replication.AdaptiveSeeds``) driven by hand: which configurations
get more seeds, in which rounds, and what it says about each."""

from __future__ import annotations

from ray.tune.search import Searcher

from microdit.config.sweep import load_sweep
from microdit.sweep.replication import AdaptiveSeeds
from microdit.sweep.search import REPLICATE, build_searcher


def _searcher(configs: int, max_seeds: int = 3, max_trials: int = 20) -> AdaptiveSeeds:
    return AdaptiveSeeds([{"x0": i} for i in range(configs)], "fid_8", "min", max_seeds=max_seeds,
                         max_trials=max_trials, replicate_key=REPLICATE)


def _finish(searcher: AdaptiveSeeds, trial_id: str, fid: float | None, std: float = 2.0, error: bool = False):
    result = None if fid is None else {"fid_8": fid, "fid_8_std": std, "budget_done": 1.0}
    searcher.on_trial_complete(trial_id, result, error=error)


def test_more_seeds_only_within_noise_of_the_best_round_by_round():
    searcher = _searcher(4, max_seeds=3)
    first = [searcher.suggest(f"t{i}") for i in range(4)]
    assert first == [{"x0": i, REPLICATE: 0} for i in range(4)]
    assert searcher.suggest("t4") is None  # the round's results decide the next seeds
    # best 100 ± 2; 104 ± 2 within noise (4 <= 2 x 2.83); 120 worse; the 4th was stopped by a scheduler
    for trial_id, fid in (("t0", 100.0), ("t1", 104.0), ("t2", 120.0)):
        _finish(searcher, trial_id, fid)
    assert searcher.suggest("t4") is None  # t3 still runs
    _finish(searcher, "t3", None)  # no result, no error: stopped early
    second = [searcher.suggest("t4"), searcher.suggest("t5")]
    assert second == [{"x0": 0, REPLICATE: 1}, {"x0": 1, REPLICATE: 1}]
    assert searcher.suggest("t4") == {"x0": 0, REPLICATE: 1}  # a rerun of a trial gets its own config back
    # seeds now: config 0: 100, 101 (mean 100.5, std 0.71); config 1: 104, 112 (mean 108, std 5.66): worse
    # than 100.5 by 7.5 <= 2 x sqrt(0.5 + 32) = 11.4: still within noise, so both get a third seed
    _finish(searcher, "t4", 101.0)
    _finish(searcher, "t5", 112.0)
    third = [searcher.suggest("t6"), searcher.suggest("t7")]
    assert third == [{"x0": 0, REPLICATE: 2}, {"x0": 1, REPLICATE: 2}]
    _finish(searcher, "t6", 100.0)
    _finish(searcher, "t7", 109.0)
    assert searcher.suggest("t8") is Searcher.FINISHED  # both at max_seeds
    why = {tuple(row["trials"]): (row["seeds_requested"], row["why"]) for row in searcher.explain()}
    assert why[("t0", "t4", "t6")] == (3, "max_seeds (3) reached")
    assert why[("t1", "t5", "t7")] == (3, "max_seeds (3) reached")
    assert why[("t2",)][0] == 1 and why[("t2",)][1].startswith("worse than the best (100 ± 2) beyond noise after 1 seed")
    assert why[("t3",)] == (1, "stopped early by the scheduler")


def test_max_trials_ends_the_replication_and_failures_get_no_seed():
    searcher = _searcher(2, max_seeds=5, max_trials=3)
    searcher.suggest("a")
    searcher.suggest("b")
    _finish(searcher, "a", 100.0)
    _finish(searcher, "b", None, error=True)
    assert searcher.suggest("c") == {"x0": 0, REPLICATE: 1}  # the best alone goes on
    assert searcher.suggest("d") is Searcher.FINISHED  # max_trials 3
    assert searcher.explain()[1]["why"] == "its trial failed"


def test_state_survives_a_save_and_restore(tmp_path):
    searcher = _searcher(2)
    searcher.suggest("a")
    _finish(searcher, "a", 100.0)
    searcher.save(str(tmp_path / "state.pkl"))
    restored = _searcher(2)
    restored.restore(str(tmp_path / "state.pkl"))
    assert restored.suggest("a") == {"x0": 0, REPLICATE: 0} and restored.readings[0] == [(100.0, 2.0)]
    assert restored.suggest("b") == {"x0": 1, REPLICATE: 0}


def test_seeds_auto_spec_builds_the_adaptive_searcher(tmp_path):
    spec = load_sweep({"name": "s", "base": "demo", "space": {"phases[0].mask_ratio": {"grid": [0.0, 0.5]}},
                       "objectives": [{"metric": "fid_128", "mode": "min"}], "trial_budget": {"images": 64},
                       "search": {"algorithm": "grid"}, "seeds": "auto", "max_seeds": 3,
                       "budget": {"max_trials": 10}})
    assert spec.num_trials() == 6  # 2 configurations x max_seeds 3: Tune's upper bound
    guard = build_searcher(spec, str(tmp_path), trial_dollars=0.01)
    assert isinstance(guard.searcher, AdaptiveSeeds)
    assert guard.suggest("a") == {"x0": 0.0, REPLICATE: 0}


def test_the_report_shows_each_configurations_seeds_and_why(tmp_path):
    """The searcher writes its decisions to the sweep's MLflow run; the report puts them beside the
    configurations it averaged, and says when a requested seed never ran."""
    from microdit.sweep.report import replication_notes
    from microdit.tracking import client, get_or_create_run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent, _ = get_or_create_run(uri, "e", "sweep", "sweep")
    searcher = AdaptiveSeeds([{"x0": 0}, {"x0": 1}], "fid_8", "min", max_seeds=3, max_trials=3,
                             replicate_key=REPLICATE, tracking=(uri, parent))
    searcher.suggest("t0")
    searcher.suggest("t1")
    _finish(searcher, "t0", 100.0)
    _finish(searcher, "t1", 101.0)  # within noise: both get a 2nd seed, but max_trials 3 runs only one
    searcher.suggest("t2")
    configs = [{"x": 0, "n": 1, "trials": "t0"}, {"x": 1, "n": 1, "trials": "t1"}]  # t2 is still running
    notes = replication_notes(client(uri), parent, configs)
    assert [n["why"] for n in notes] == [
        "the best after 1 seed: seed 2 added; seed 2 not run (the sweep's max_trials or dollar budget)",
        "within noise of the best after 1 seed: seed 2 added; seed 2 not run (the sweep's max_trials or dollar budget)"]
    assert configs[0]["seeds_why"] == notes[0]["why"]
