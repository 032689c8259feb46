"""Resume on the real local Ray cluster with 2 CPU workers: a worker failure, and a relaunched driver.

Both compare against the session's uninterrupted ``baseline`` run (same seed, same tiny recipe):
the resumed run must end with the same step count and images seen, and every rank must have
consumed exactly the same rows at every step (no duplicate, no gap across the restart).
"""

from __future__ import annotations

import pytest

from train_testing import BATCH, STEPS, mlflow_runs, read_id_lines, read_ids, tiny_recipe

FAIL_AT = 3  # checkpoints every 2 steps: the failed attempt dies after step 2's checkpoint + 1 step


def _assert_same_rows_as_baseline(ids_dir, baseline) -> None:
    resumed, expected = read_ids(ids_dir), read_ids(baseline.ids_dir)
    assert sorted(resumed) == sorted(expected) == [0, 1]
    for rank in expected:
        assert resumed[rank] == expected[rank], f"rank {rank} consumed other rows than the baseline"
        rows = [i for key in sorted(resumed[rank]) for i in resumed[rank][key]]
        assert len(rows) == len(set(rows)) == STEPS * BATCH // 2  # no duplicate, no gap


def test_worker_failure_resumes_exactly(train_demo, baseline, tmp_path):
    from microdit.train.trainer import run_training

    ids_dir = tmp_path / "ids"
    recipe = tiny_recipe(train_demo, tmp_path, "baseline",  # same name: same seeds everywhere
                         {"debug": {"fail_at_step": FAIL_AT, "record_ids_dir": str(ids_dir)},
                          "tracking.max_failures": 1})
    summary = run_training(recipe)

    assert (tmp_path / "runs" / "baseline" / "final" / f"failed_once_at_{FAIL_AT}").exists()
    assert summary.global_step == baseline.summary.global_step == STEPS
    assert summary.images_seen == baseline.summary.images_seen == STEPS * BATCH
    _assert_same_rows_as_baseline(ids_dir, baseline)
    # The failed attempt ran step 2 (after the step-2 checkpoint) and the retry replayed it from the
    # checkpoint: the replayed step read the very same rows, and no step before it was replayed.
    for rank in (0, 1):
        steps = [line["step"] for line in read_id_lines(ids_dir, rank)]
        assert steps == [0, 1, 2, 2, 3, 4, 5], steps
    (run,) = mlflow_runs(recipe.tracking.mlflow_uri, recipe.tracking.experiment, "baseline")
    assert run.info.status == "FINISHED" and run.info.run_id == summary.mlflow_run_id


def test_relaunched_driver_resumes_the_same_run(train_demo, baseline, tmp_path):
    from microdit.train.trainer import run_training

    ids_dir = tmp_path / "ids"
    failing = tiny_recipe(train_demo, tmp_path, "baseline",
                          {"debug": {"fail_at_step": FAIL_AT + 2, "record_ids_dir": str(ids_dir)},
                           "tracking.max_failures": 0})
    with pytest.raises(Exception, match="injected failure at step 5"):
        run_training(failing)
    (first,) = mlflow_runs(failing.tracking.mlflow_uri, failing.tracking.experiment, "baseline")
    assert first.info.status == "FAILED"

    relaunched = tiny_recipe(train_demo, tmp_path, "baseline", {"debug": {"record_ids_dir": str(ids_dir)}})
    summary = run_training(relaunched)

    assert summary.global_step == STEPS and summary.images_seen == STEPS * BATCH
    runs = mlflow_runs(relaunched.tracking.mlflow_uri, relaunched.tracking.experiment, "baseline")
    assert len(runs) == 1, "a relaunch must continue the MLflow run, not start another"
    assert runs[0].info.run_id == first.info.run_id == summary.mlflow_run_id
    assert runs[0].info.status == "FINISHED"
    assert runs[0].data.metrics["images_seen"] == STEPS * BATCH
    _assert_same_rows_as_baseline(ids_dir, baseline)
    for rank in (0, 1):  # resumed from the step-4 checkpoint: only step 4 was read twice
        steps = [line["step"] for line in read_id_lines(ids_dir, rank)]
        assert steps == [0, 1, 2, 3, 4, 4, 5], steps
