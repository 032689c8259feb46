"""Pareto front on known points, and the budget guard's launch decisions."""

from __future__ import annotations

from ray.tune.search import Searcher

from microdit.sweep.pareto import pareto_front
from microdit.sweep.search import BudgetGuard, ListSearcher


def test_pareto_front_of_known_points():
    # (fid, cost): C is dominated by B, E by A; duplicates of a front point both count.
    points = [(10.0, 1.0), (8.0, 2.0), (9.0, 2.5), (5.0, 4.0), (12.0, 1.5), (5.0, 4.0)]
    assert pareto_front(points, ["min", "min"]) == [0, 1, 3, 5]
    # maximising the first objective flips the picture
    assert pareto_front([(1.0, 1.0), (2.0, 1.0), (2.0, 0.5)], ["max", "min"]) == [2]
    assert pareto_front([], ["min"]) == []


def test_budget_guard_stops_launching_at_the_budget():
    configs = [{"x0": i} for i in range(10)]
    guard = BudgetGuard(ListSearcher(configs), budget_dollars=1.0, trial_dollars=0.3)
    # three trials fit (0.9 committed); the fourth would pass 1.0 while three are running: wait (None)
    assert [guard.suggest(f"t{i}") for i in range(3)] == configs[:3]
    assert guard.suggest("t3") is None
    guard.on_trial_complete("t0", {"cost_usd": 0.25})  # spent 0.25, committed 0.6 -> 0.85 + 0.3 > 1.0
    assert guard.suggest("t3") is None
    guard.on_trial_complete("t1", {"cost_usd": 0.2})  # spent 0.45, committed 0.3 -> 0.75 + 0.3 > 1.0
    assert guard.suggest("t3") is None
    guard.on_trial_complete("t2", {"cost_usd": 0.2})  # spent 0.65, nothing running -> 0.95 <= 1.0
    assert guard.suggest("t3") == configs[3]
    guard.on_trial_complete("t3", {"cost_usd": 0.3})  # spent 0.95: nothing more fits, nothing runs
    assert guard.suggest("t4") == Searcher.FINISHED
    assert abs(guard.spent - 0.95) < 1e-12 and guard.refused == 4


def test_budget_guard_state_survives_save_restore(tmp_path):
    guard = BudgetGuard(ListSearcher([{"x0": 1}, {"x0": 2}]), budget_dollars=5.0, trial_dollars=1.0)
    guard.suggest("a")
    guard.on_trial_complete("a", {"cost_usd": 0.7})
    guard.save(str(tmp_path / "searcher.pkl"))  # what Tune does: the wrapped searcher's file...
    state = guard.get_state()  # ...and the wrapper's own state in its experiment state
    fresh = BudgetGuard(ListSearcher([{"x0": 1}, {"x0": 2}]), budget_dollars=5.0, trial_dollars=1.0)
    fresh.restore(str(tmp_path / "searcher.pkl"))
    fresh.set_state(state)
    assert fresh.spent == 0.7 and fresh.suggest("b") == {"x0": 2}


def test_a_failed_trial_is_charged_its_full_budget():
    """An errored trial reports no cost: the guard charges it the per-trial budget (it may have
    spent all of it), so failures cannot let a sweep run past its budget."""
    guard = BudgetGuard(ListSearcher([{"x0": i} for i in range(5)]), budget_dollars=1.0, trial_dollars=0.4)
    guard.suggest("a")
    guard.on_trial_complete("a", None, error=True)
    assert guard.spent == 0.4 and guard.running == set()
    guard.suggest("b")
    guard.on_trial_complete("b", {"cost_usd": 0.1, "trial_id": "b"}, error=True)  # a cost was reported: use it
    assert abs(guard.spent - 0.5) < 1e-12
    assert guard.suggest("c") == {"x0": 2}  # 0.5 + 0.4 <= 1.0
    assert guard.suggest("d") is None  # 0.5 + 0.8 > 1.0 while c runs
