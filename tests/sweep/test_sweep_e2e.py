"""A true end-to-end sweep: Ray Tune + Ray Train (TorchTrainer) + Optuna/grid + MLflow, two tiny trials."""

from __future__ import annotations

import subprocess
import sys
import time

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


def test_two_trial_sweep_end_to_end(tiny_demo, tmp_path):
    spec = load_sweep(tiny_spec(tiny_demo, tmp_path, "e2e"))
    outcome = run_sweep(spec)
    assert (outcome.finished, outcome.stopped_early, outcome.failed) == (2, 0, 0)
    assert outcome.spent_usd > 0

    uri = spec.mlflow_uri
    parent_id = find_run(uri, spec.experiment, "e2e")
    parent = client(uri).get_run(parent_id)
    assert parent.data.tags[KIND_TAG] == "sweep" and parent.info.status == "FINISHED"
    assert parent.data.metrics["trials_finished"] == 2
    artifacts = {a.path for a in client(uri).list_artifacts(parent_id)}
    assert {"pareto.txt", "pareto.png"} <= artifacts

    runs = children(uri, parent_id)
    assert len(runs) == 2
    ratios = sorted(float(r.data.params["sweep.phases.0.mask_ratio"]) for r in runs)
    assert ratios == [0.0, 0.5]
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.data.tags["microdit.trial_status"] == "finished" and run.data.tags["tune.trial_id"]
        assert run.data.metrics["images_seen"] == 24  # 3 steps x batch 8 = the per-trial image budget
        assert 0 < run.data.metrics["fid_8"] < 1e4 and run.data.metrics["cost_usd"] > 0
        assert run.data.metrics["loss"] > 0  # step metrics logged by rank 0 into the child run

    # `microdit compare` rebuilds the same table from MLflow alone
    again = compare("e2e", uri, spec.experiment)
    assert again.finished == 2 and len(again.rows) == 2 and len(again.front) >= 1
    assert "Pareto front" in again.text and "best fid_8" in again.text


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
