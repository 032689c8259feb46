"""Settings that must reach every node: resolved locations, the shipped package, the tracking check."""

from __future__ import annotations

import json
import os

import pytest

from microdit import cluster, storage


def test_runtime_env_ships_the_package_and_settings_minus_what_the_job_sets(monkeypatch):
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    monkeypatch.setenv("MICRODIT_ROOT", "s3://bucket/team")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    env = cluster.runtime_env()
    assert env["py_modules"] == [cluster.PACKAGE_DIR]
    assert os.path.isfile(os.path.join(cluster.PACKAGE_DIR, "storage.py"))
    assert env["env_vars"]["MICRODIT_ROOT"] == "s3://bucket/team"
    assert env["env_vars"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert "AWS_SECRET_ACCESS_KEY" not in env["env_vars"]  # credentials stay on the nodes
    # inside `ray job submit` whose runtime env already sets py_modules and MICRODIT_ROOT: Ray refuses
    # a field or variable given twice, so they are left to the job
    job = {"runtime_env": {"py_modules": ["platform/microdit"], "env_vars": {"MICRODIT_ROOT": "s3://other"}}}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(job))
    env = cluster.runtime_env()
    assert "py_modules" not in env and "MICRODIT_ROOT" not in env["env_vars"]
    assert env["env_vars"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    monkeypatch.setenv(cluster.SHIP_PACKAGE_ENV, "0")
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR")
    monkeypatch.delenv("MICRODIT_ROOT")
    env = cluster.runtime_env()
    assert "py_modules" not in env
    assert env["env_vars"]["MICRODIT_ROOT"] == os.path.expanduser("~/microdit")  # resolved here, not per node


@pytest.mark.parametrize("uri, file_based", [
    ("sqlite:////home/u/microdit/mlflow.db", True), ("file:///tmp/mlruns", True), ("/tmp/mlruns", True),
    ("http://127.0.0.1:5000", False), ("https://mlflow.example.com", False), ("databricks", False), ("mlruns", True),
    ("postgresql://u@db/mlflow", False),
])
def test_file_based_mlflow_stores_are_recognised(uri, file_based):
    assert cluster.is_file_store(uri) is file_based


def test_default_locations_follow_the_root_not_the_working_directory(monkeypatch, tmp_path):
    from microdit.config.recipe import load_recipe
    from microdit.tracking import tracking_uri
    from microdit.train.trainer import storage_path, with_resolved_data

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MICRODIT_DATA_ROOT", raising=False)
    monkeypatch.setenv(storage.ROOT_ENV, str(tmp_path / "root"))
    recipe = load_recipe("demo")
    assert storage_path(recipe) == str(tmp_path / "root" / "runs")
    assert tracking_uri() == f"sqlite:///{tmp_path / 'root' / 'mlflow.db'}"
    resolved = with_resolved_data(recipe)
    assert resolved["data"]["real"] == str(tmp_path / "root" / "data" / "demo_real")
    assert recipe.data.real == "demo_real"  # the recipe itself (logged, compared on resume) is unchanged

    monkeypatch.setenv(storage.ROOT_ENV, "s3://bucket/team")
    assert storage_path(recipe) == "s3://bucket/team/runs"
    assert tracking_uri() == "sqlite:///" + os.path.expanduser("~/microdit/mlflow.db")  # SQLite needs a disk
    uri_recipe = load_recipe("demo", {"tracking.storage_path": "s3://b2/runs/", "data.real": "s3://b2/sets/real",
                                      "phases[0].data": {"synthetic": "./local/syn"}})
    assert storage_path(uri_recipe) == "s3://b2/runs"
    resolved = with_resolved_data(uri_recipe)
    assert resolved["data"]["real"] == "s3://b2/sets/real"
    assert resolved["phases"][0]["data"]["synthetic"] == str(tmp_path / "local" / "syn")


def test_experiments_open_on_the_runs_table_in_the_mlflow_ui(tmp_path):
    from mlflow.tracking import MlflowClient

    from microdit.tracking import experiment_id

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    made = experiment_id(uri, "fresh")
    mlflow = MlflowClient(tracking_uri=uri)
    assert mlflow.get_experiment(made).tags["mlflow.experimentKind"] == "custom_model_development"
    old = mlflow.create_experiment("by-hand")  # an experiment made without the tag gets it on first use
    assert experiment_id(uri, "by-hand") == old
    assert mlflow.get_experiment(old).tags["mlflow.experimentKind"] == "custom_model_development"
