"""The anytime view (``microdit.sweep.anytime``) on known curves: which configuration each budget buys."""

from __future__ import annotations

import pytest

from microdit.sweep.anytime import (
    anytime_plot,
    anytime_rows,
    anytime_summary,
    budgets,
    configuration_curves,
    format_anytime,
)


def _point(cost, value, std=1.0):
    return {"cost_usd": cost, "value": value, "std": std}


# fast starts well and then flattens; slow starts badly and ends best; quit was stopped at its 1st rung
CURVES = {
    "s-fast": [_point(1.0, 300), _point(2.1, 250), _point(4.2, 240)],
    "s-slow": [_point(1.1, 330), _point(2.0, 260), _point(4.0, 200)],
    "s-quit": [_point(1.05, 290, 10.0)],
}
ROWS = [
    {"trial": "s-fast", "status": "finished", "lr": 0.003},
    {"trial": "s-slow", "status": "finished", "lr": 0.0003},
    {"trial": "s-quit", "status": "stopped_early", "lr": 0.01, "stopped_at_usd": 1.0},
]


def test_budgets_and_choices_follow_the_curves():
    configs = configuration_curves(ROWS, CURVES, ["lr"])
    assert [c["label"] for c in configs] == ["lr=0.003", "lr=0.0003", "lr=0.01"]
    assert budgets(configs) == [1.1, 2.1, 4.2]  # the largest k-th point cost, k = 0, 1, 2
    rows = anytime_rows(configs, "min")
    # at $1.1: quit 290 ± 10 is best, fast (300 ± 1) is within noise; slow 330 ± 1 is not
    assert rows[0]["choose"] == "lr=0.01 (stopped at $1.00)" and rows[0]["within_noise"] == "lr=0.003"
    assert [r["_label"] for r in rows] == ["lr=0.01", "lr=0.003", "lr=0.0003"]
    assert [r["_value"] for r in rows] == [290, 250, 200]
    assert rows[2]["reading"] == "200.0 ± 1.0" and rows[2]["at_cost"] == 4.0
    assert anytime_summary(rows) == ("at <= $1.10 choose lr=0.01 (stopped at $1.00); from $2.10 choose lr=0.003; "
                                     "from $4.20 choose lr=0.0003")
    table = format_anytime(rows, "fid_128")
    assert table.splitlines()[0].split() == ["budget", "choose", "fid_128", "at_cost", "within_noise"]
    assert "<= $4.20" in table


def test_a_budget_below_every_reading_of_a_configuration_leaves_it_out():
    configs = configuration_curves(ROWS[:2], {"s-fast": CURVES["s-fast"], "s-slow": [_point(3.0, 100)]}, ["lr"])
    rows = anytime_rows(configs, "min")
    assert [r["budget"] for r in rows] == [2.1, 3.0, 4.2]
    # at $2.1 slow has no reading yet; at $3 its first (100) beats fast's 250
    assert [r["_label"] for r in rows] == ["lr=0.003", "lr=0.0003", "lr=0.0003"]


def test_seeds_are_averaged_point_by_point():
    rows = [{"trial": "s-a", "status": "finished", "lr": 1}, {"trial": "s-b", "status": "finished", "lr": 1}]
    curves = {"s-a": [_point(1.0, 100), _point(2.0, 90)], "s-b": [_point(1.2, 110)]}
    (config,) = configuration_curves(rows, curves, ["lr"])
    first, second = config["points"]
    assert first["cost_usd"] == pytest.approx(1.1) and first["value"] == 105 and first["n"] == 2
    assert first["std"] == pytest.approx(7.0710678)  # std over the two seeds
    assert (second["value"], second["std"], second["n"]) == (90, 1.0, 1)  # one seed: its own std
    assert config["trials"] == "a,b"


def test_maximised_metrics_choose_the_largest(tmp_path):
    configs = configuration_curves(ROWS[:2], CURVES, ["lr"])
    rows = anytime_rows(configs, "max")
    assert [r["_label"] for r in rows] == ["lr=0.0003", "lr=0.0003", "lr=0.003"]
    plot = anytime_plot(configs, rows, "clip_score", tmp_path / "anytime.png", "t")
    assert plot.stat().st_size > 10_000  # a rendered figure, not an empty file
