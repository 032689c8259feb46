"""A true end-to-end sweep: Ray Tune + Ray Train (TorchTrainer) + Optuna/grid + MLflow, two tiny trials."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from sweep_testing import tiny_spec

from microdit.config.sweep import load_sweep
from microdit.sweep.report import compare
from microdit.sweep.runner import run_sweep
from microdit.tracking import KIND_TAG, client, find_run


def children(uri: str, parent_id: str):
    mlflow_client = client(uri)
    experiment = mlflow_client.get_run(parent_id).info.experiment_id
    return mlflow_client.search_runs([experiment], filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'")


def test_two_trial_sweep_accounting_failure_and_read_only_compare(tiny_demo, tmp_path, capsys):
    """One trial finishes, one fails on purpose. The report's cost is the trial's logged final cost
    (training + evaluation, MLflow's latest value), the total is the trials plus the driver's shared
    overhead, the failure is counted and `microdit sweep` exits 1; `microdit compare` writes nothing.
    The finishing trial loses its process at step 2 (its driver is killed, as by a lost node): Tune
    reruns it, it resumes from its last checkpoint and the report counts the rerun; the failing
    trial's own error is final (no rerun)."""
    from microdit.cli.main import main
    from microdit.sweep.accounting import FINAL_COST, usd

    data = tiny_spec(tiny_demo, tmp_path, "e2e")
    data["space"] = {"variant": {"grid": [
        {"phases[0].mask_ratio": 0.0, "debug.kill_driver_at_step": 2, "tracking.checkpoint_every_steps": 1},
        {"phases[0].mask_ratio": 0.5, "debug.fail_at_step": 1, "tracking.max_failures": 0},
    ]}}
    data["budget"]["max_concurrent"] = 2  # both at once: the session cluster fits two 0.5-CPU trials
    spec_file = tmp_path / "e2e.yaml"
    spec_file.write_text(yaml.safe_dump(data))
    # the console entry, as a user runs it, output to a file (not a terminal): a short, readable log
    # It joins the session's cluster (as a driver would join `ray start`): two clusters on one
    # machine would make Ray's address auto-detection (Train's placement-group cleaner) fail.
    import os

    import ray

    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address,
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # loopback: keep 127.0.0.1
    log = tmp_path / "console.log"
    with log.open("w") as out:
        done = subprocess.run([sys.executable, "-m", "microdit", "sweep", str(spec_file)], stdout=out,
                              stderr=subprocess.STDOUT, timeout=600, env=env)
    text = log.read_text()
    lines = text.splitlines()
    assert done.returncode == 1, text[-3000:]
    assert len(lines) <= 80, f"{len(lines)} lines:\n{text}"
    assert "sweep e2e: 1 finished, 0 stopped early, 1 failed" in text and "1 trial(s) failed" in text
    assert sum(line.startswith("trial ") and " started: " in line for line in lines) == 2
    assert sum(line.startswith("trial ") and line.endswith(" restarted") for line in lines) == 1
    (failed,) = [line for line in lines if line.startswith("trial ") and " FAILED: " in line]
    assert "RuntimeError: injected failure at step 1 (debug.fail_at_step)" in failed  # the error, named
    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert f"  MLflow    mlflow ui --backend-store-uri {db}" in text
    (plot,) = [line.split()[-1] for line in lines if line.startswith("  plot ")]
    assert plot.startswith("file://") and Path(plot[len("file://"):]).is_file() and plot.endswith("/pareto.png")
    (best,) = [line for line in lines if line.startswith("  best ")]
    assert best.split()[-1].endswith("/final_weights.pt") and Path(best.split()[-1]).is_file()
    assert "Reporting training result" not in text and "Trial status" not in text  # Ray's internals stay quiet
    assert "Traceback" not in text, text
    (rerun,) = [line for line in lines if " lost its process, rerun from its last checkpoint" in line]
    assert rerun.startswith("trial ") and "(failure 1 of at most 3)" in rerun

    spec = load_sweep(str(spec_file))
    uri = spec.mlflow_uri
    mlflow_client = client(uri)
    parent_id = find_run(uri, spec.experiment, "e2e")
    parent = mlflow_client.get_run(parent_id)
    assert parent.data.tags[KIND_TAG] == "sweep" and parent.info.status == "FINISHED"
    assert parent.data.metrics["trials_finished"] == 1
    overhead = parent.data.metrics["overhead_usd"]
    assert overhead > 0 and parent.data.metrics["overhead_seconds"] > 0  # data + FID reference stats, once
    assert {"pareto.txt", "pareto.png", "sweep_trials.json"} <= {a.path for a in mlflow_client.list_artifacts(parent_id)}
    import json

    table = json.loads(Path(mlflow_client.download_artifacts(parent_id, "sweep_trials.json", str(tmp_path))).read_text())
    status = table["columns"].index("status")
    assert sorted(row[status] for row in table["data"]) == ["failed", "finished"]

    runs = {r.data.tags["microdit.trial_status"]: r for r in children(uri, parent_id)}
    assert sorted(runs) == ["failed", "finished"]
    good, bad = runs["finished"], runs["failed"]
    assert bad.info.status == "FAILED" and bad.data.tags["tune.trial_id"]
    metrics = good.data.metrics
    assert metrics[FINAL_COST] == pytest.approx(metrics["final/train_usd"] + metrics["final/eval_usd"], rel=1e-12)
    assert metrics["cost_usd"] == metrics[FINAL_COST]  # MLflow's latest value is the final one
    assert metrics["final/eval_usd"] > 0 and metrics["final/train_usd"] > 0
    # evaluation ran as its own Train run on the trial's worker (CPU, $0.05/h here), billed for the
    # seconds that worker was held, start-up included
    resources = load_recipe_for_trial(spec).resources
    billed = metrics["eval_seconds"] / 3600 * resources.billed_devices * resources.hourly_price
    assert resources.billed_devices == 1 and metrics["final/eval_usd"] == pytest.approx(billed, rel=1e-9)
    assert metrics["eval_seconds"] > 1.0  # a Train worker group started for it (seconds on this box)
    assert metrics["images_seen"] == metrics["final/images_seen"] == 24  # 3 steps x batch 8 = the budget
    history = mlflow_client.get_metric_history(good.info.run_id, "cost_usd")
    assert max(history, key=lambda m: m.step).value == metrics[FINAL_COST]
    assert 0 < metrics["fid_8"] < 1e4 and metrics["fid_8_std"] > 0
    assert metrics["loss"] > 0  # step metrics logged by rank 0 into the child run
    assert good.data.tags["microdit.trial_attempts"] == "2" and bad.data.tags["microdit.trial_attempts"] == "1"
    resumed = mlflow_client.get_metric_history(good.info.run_id, "resumed_from_step")
    # the rerun continued from the last checkpoint Train had registered: step 2's, or step 1's when the
    # kill came before the controller's next poll took in step 2's report
    assert [m.value for m in resumed] in ([1.0], [2.0])

    report = compare("e2e", uri, spec.experiment)
    (row,) = [r for r in report.rows if r["status"] == "finished"]
    assert row["cost_usd"] == metrics[FINAL_COST]
    failed_row = next(r for r in report.rows if r["status"] == "failed")
    assert report.spent_usd == pytest.approx(row["cost_usd"] + failed_row["cost_usd"] + overhead, rel=1e-12)
    assert (report.finished, report.failed) == (1, 1) and len(report.configs) == 1 and report.front == [0]
    assert "1 finished, 0 stopped early, 1 failed (1 restarted after a failure, from their last checkpoint)" \
        in report.text
    assert (row["restarts"], failed_row["restarts"]) == (1, 0)
    assert f"spent {usd(report.spent_usd)} = trials {usd(report.spent_usd - overhead)}" in report.text
    assert "best fid_8" in report.text
    assert set(failed_row["variant"].split(",")) == {"phases[0].mask_ratio=0.5", "debug.fail_at_step=1",
                                                     "tracking.max_failures=0"}  # logged
    # before training, so a trial that fails keeps its parameters

    # compare is read-only: the parent run's metrics and artifacts are untouched
    before = (mlflow_client.get_run(parent_id).data.metrics, len(mlflow_client.get_metric_history(parent_id, "spent_usd")))
    compare("e2e", uri, spec.experiment)
    assert main(["compare", "e2e", "--mlflow-uri", uri, "--experiment", spec.experiment]) == 0
    after = (mlflow_client.get_run(parent_id).data.metrics, len(mlflow_client.get_metric_history(parent_id, "spent_usd")))
    assert after == before


@pytest.mark.slow
def test_killed_driver_resumes_without_duplicates(tiny_demo, tmp_path):
    """Kill the sweep driver after its first trial, run it again: 2 trials, 2 MLflow runs, 2 Optuna trials."""
    data = tiny_spec(tiny_demo, tmp_path, "resume", algorithm="tpe")
    spec_file = tmp_path / "resume.yaml"
    spec_file.write_text(yaml.safe_dump(data))
    spec = load_sweep(str(spec_file))
    uri = spec.mlflow_uri
    driver = subprocess.Popen([sys.executable, "-m", "microdit.cli.main", "sweep", str(spec_file)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 600
        while time.time() < deadline:
            parent_id = find_run(uri, spec.experiment, "resume") if (tmp_path / "mlflow.db").exists() else None
            if parent_id and any(r.info.status == "FINISHED" for r in children(uri, parent_id)):
                break
            time.sleep(2)
        else:
            pytest.fail("the first trial did not finish within 10 minutes")
    finally:
        driver.kill()
        driver.wait()
    outcome = run_sweep(spec)
    runs = children(uri, find_run(uri, spec.experiment, "resume"))
    assert len(runs) == 2 and outcome.finished == 2
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    journal = tmp_path / "runs" / "sweeps" / "resume" / "optuna_journal.log"
    study = optuna.load_study(study_name="resume", storage=JournalStorage(JournalFileBackend(str(journal))))
    assert len(study.trials) == 2


def load_recipe_for_trial(spec):
    from microdit.config.recipe import RecipeConfig
    from microdit.sweep.runner import first_corner

    return RecipeConfig.from_dict(spec.trial_recipe(first_corner(spec), "price"))
