"""A real cost-aware sweep: 4 trials (Ray Tune + Train + MLflow) read at a dollar rung, ``cost_asha``
stopping the worse ones there, and the anytime table, plot and bill that come out of it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sweep_testing import tiny_spec

from microdit.config.sweep import load_sweep
from microdit.sweep.accounting import FINAL_COST, trial_cost
from microdit.sweep.report import compare
from microdit.sweep.runner import run_sweep
from microdit.tracking import client

RUNG = 1.0e-4  # dollars: ~7 s of one CPU worker at $0.05 per worker-hour
TRIAL_DOLLARS = 2.0e-4


def test_four_trial_sweep_with_a_rung_bills_stopped_trials_and_reports_anytime(tiny_demo, tmp_path):
    """Two learning rates x two synthetic fractions, one at a time: the 1e-7 trials stay at their
    untrained FID while the 3e-3 ones improve, so at the $0.0001 rung (plain ASHA here, noise_k 0) at
    least one trial is worse than the cut and stopped. Every trial is billed, stopped ones for their spend
    up to Tune stopping them; the total is their sum plus the overhead; the anytime table and plot land
    on the sweep's MLflow run; stopped trials are in the anytime table, never on the Pareto front."""
    data = tiny_spec(tiny_demo, tmp_path, "anytime", max_trials=4)
    data["overrides"]["phases"][0]["steps"] = 1_000_000  # the dollar budget ends every trial
    data["space"] = {"phases[0].lr": {"grid": [3.0e-3, 1.0e-7]}, "data.synthetic_fraction": {"grid": [0.0, 1.0]}}
    data["trial_budget"] = {"dollars": TRIAL_DOLLARS}
    data["scheduler"] = {"type": "cost_asha", "grace_dollars": RUNG, "noise_k": 0.0}
    outcome = run_sweep(load_sweep(data))

    uri = data["mlflow_uri"]
    mlflow_client = client(uri)
    report = compare("anytime", uri, "microdit-sweeps")
    stopped = [r for r in report.rows if r["status"] == "stopped_early"]
    finished = [r for r in report.rows if r["status"] == "finished"]
    assert len(report.rows) == 4 and len(stopped) >= 1 and len(finished) + len(stopped) == 4, outcome.report
    assert outcome.stopped_early == len(stopped) and outcome.failed == 0
    for row in stopped:
        run = mlflow_client.get_run(row["run_id"])
        metrics = run.data.metrics
        assert metrics["stopped_at_usd"] == RUNG and run.info.status == "KILLED"
        assert run.data.tags["microdit.stop_reason"].startswith(f"fid_8 {metrics['fid_8']:.4g}")
        assert "worse than the cut" in run.data.tags["microdit.stop_reason"]
        # billed: its spend at the reading (training + the reading itself) and the seconds until the stop
        reading = max(mlflow_client.get_metric_history(row["run_id"], "milestone_usd"), key=lambda m: m.step).value
        assert reading >= RUNG and metrics["final/stop_lag_usd"] >= 0
        assert metrics[FINAL_COST] == pytest.approx(reading + metrics["final/stop_lag_usd"], rel=1e-9)
        assert trial_cost(row) == metrics[FINAL_COST] < TRIAL_DOLLARS * 2
    for row in finished:
        readings = mlflow_client.get_metric_history(row["run_id"], "milestone_usd")
        assert [m.value >= RUNG for m in readings] == [True]  # one rung below the budget, read once
        assert row[FINAL_COST] > readings[0].value  # the final point lies beyond its reading
    # the bill: every trial, finished or stopped, plus the shared overhead
    assert report.spent_usd == pytest.approx(sum(trial_cost(r) for r in report.rows) + report.overhead_usd, rel=1e-12)
    assert outcome.spent_usd == pytest.approx(report.spent_usd, rel=1e-12)
    # the Pareto front is finished trials only; the anytime table shows every configuration's readings
    assert sum(c["n"] for c in report.configs) == len(finished)
    assert "anytime: the configuration to choose within each budget" in report.text
    assert "stopped early (" in report.text and "stopping saved about $" in report.text
    parent = mlflow_client.get_run(outcome.parent_run_id)
    artifacts = {a.path for a in mlflow_client.list_artifacts(outcome.parent_run_id)}
    assert {"anytime.png", "anytime.json", "pareto.png"} <= artifacts, artifacts
    assert parent.data.metrics["spent_usd"] == pytest.approx(report.spent_usd, rel=1e-12)
    table = json.loads(Path(mlflow_client.download_artifacts(outcome.parent_run_id, "anytime.json",
                                                             str(tmp_path))).read_text())
    assert table["columns"] == ["budget", "choose", "reading", "at_cost", "within_noise"]
    budgets = [row[0] for row in table["data"]]
    assert budgets == sorted(budgets) and len(budgets) == 2  # the rung reading, then the final one
