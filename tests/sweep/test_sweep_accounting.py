"""What a trial and a sweep cost, every key of a trial's final metrics, money as printed, and the
averaging of replicates into configurations."""

from __future__ import annotations

import pytest

from microdit.sweep.accounting import FINAL_COST, sweep_total, trial_cost, trial_final_metrics, usd
from microdit.sweep.report import configurations


def test_trial_final_metrics_every_key():
    """Training $1.50, 0.5 device-hours; evaluation 450 s on 2 devices = 0.25 device-hours at $2 = $0.50."""
    train = {"cost_usd": 1.5, "gpu_hours": 0.5, "images_seen": 2400, "global_step": 75}
    final = trial_final_metrics(train, {"fid_128": 90, "fid_128_std": 3.0, "eval_seconds": 450},
                                price_per_device_hour=2.0, devices=2)
    assert final == {
        "final/train_usd": 1.5, "final/eval_usd": 0.5, FINAL_COST: 2.0, "final/gpu_hours": 0.75,
        "final/images_seen": 2400.0, "final/global_step": 75.0,
        "fid_128": 90.0, "fid_128_std": 3.0, "eval_seconds": 450.0,  # the evaluation's own metrics, as floats
        "cost_usd": 2.0, "eval_cost_usd": 0.5, "gpu_hours": 0.75, "images_seen": 2400.0,  # the objectives' names
    }
    assert all(type(v) is float for v in final.values())
    unevaluated = trial_final_metrics(train, None, 2.0, 2)
    assert unevaluated == {"final/train_usd": 1.5, "final/eval_usd": 0.0, FINAL_COST: 1.5, "final/gpu_hours": 0.5,
                           "final/images_seen": 2400.0, "final/global_step": 75.0, "cost_usd": 1.5,
                           "eval_cost_usd": 0.0, "gpu_hours": 0.5, "images_seen": 2400.0}


def test_trial_cost_prefers_the_final_cost():
    assert trial_cost({FINAL_COST: 2.0, "cost_usd": 0.5}) == 2.0
    assert trial_cost({"cost_usd": 0.5}) == 0.5  # a trial stopped or failed before its final metrics
    assert trial_cost({}) == 0.0  # nothing logged yet
    assert sweep_total([{FINAL_COST: 2.0, "cost_usd": 0.5}, {"cost_usd": 0.25}, {}], overhead_usd=0.125) == 2.375


def test_money_as_printed():
    assert [usd(1.0), usd(1.5), usd(0.999), usd(1234567.891), usd(-2.5)] == \
        ["$1.00", "$1.50", "$0.999", "$1,234,567.89", "$-2.50"]
    assert [usd(0), usd(0.0), usd(-0.0)] == ["$0", "$0", "$0"]  # never "$-0"


def test_configurations_group_by_swept_values_and_skip_missing_metrics():
    rows = [{"trial": "my-sweep-t1", "depth": 1, "mask": 0.5, "fid": 10.0, "images_seen": 100.0},
            {"trial": "my-sweep-t2", "depth": 2, "mask": 0.5, "fid": 20.0, "fid_std": 1.5, "images_seen": 200.0},
            {"trial": "my-sweep-t3", "depth": 1, "mask": 0.5, "fid": 14.0, "images_seen": 300.0}]
    one, two = configurations(rows, ["depth", "mask"], ["fid", "cost_usd", "images_seen"])
    # no row has cost_usd: no column for it, and the metrics after it are still averaged
    assert one == {"depth": 1, "mask": 0.5, "n": 2, "trials": "t1,t3", "fid": 12.0,
                   "fid_std": pytest.approx(2.0 * 2 ** 0.5, rel=1e-12), "images_seen": 200.0,
                   "images_seen_std": pytest.approx(100.0 * 2 ** 0.5, rel=1e-12)}
    assert two == {"depth": 2, "mask": 0.5, "n": 1, "trials": "t2", "fid": 20.0, "fid_std": 1.5, "images_seen": 200.0}
    # a metric only some replicates have is averaged over those (one value: no std of its own)
    rows[2]["cost_usd"] = 3.0
    one, _ = configurations(rows, ["depth", "mask"], ["cost_usd"])
    assert (one["cost_usd"], "cost_usd_std" in one) == (3.0, False)
