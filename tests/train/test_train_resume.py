"""Resume on the real local Ray cluster with 2 CPU workers: a worker failure, and a relaunched driver.

Both compare against the session's uninterrupted ``baseline`` run (same seed, same tiny recipe):
the resumed run must end with the same step count, images seen and (bitwise) final EMA weights,
and every rank must have consumed exactly the same rows at every step (no duplicate, no gap
across the restart). Rows are recorded with ``debug.record_ids_dir`` (one JSONL file per rank).
"""

from __future__ import annotations

import pytest
from train_testing import BATCH, STEPS, assert_same_weights, mlflow_runs, read_id_lines, read_ids, tiny_recipe

FAIL_AT = 3  # checkpoints every 2 steps: the failed attempt dies after step 2's checkpoint + 1 step


def _assert_same_rows_as_baseline(ids_dir, baseline) -> None:
    resumed, expected = read_ids(ids_dir), read_ids(baseline.ids_dir)
    assert sorted(resumed) == sorted(expected) == [0, 1]
    for rank in expected:
        assert resumed[rank] == expected[rank], f"rank {rank} consumed other rows than the baseline"
        rows = [i for key in sorted(resumed[rank]) for i in resumed[rank][key]]
        assert len(rows) == len(set(rows)) == STEPS * BATCH // 2  # no duplicate, no gap


def _attempts(ids_dir, rank: int) -> list[list[dict]]:
    """Split a rank's id lines into attempts: a new attempt starts where the step does not advance."""
    attempts: list[list[dict]] = [[]]
    for line in read_id_lines(ids_dir, rank):
        if attempts[-1] and line["step"] <= attempts[-1][-1]["step"]:
            attempts.append([])
        attempts[-1].append(line)
    return attempts


def _assert_resumed_at(ids_dir, rank: int, checkpoint_step: int, failed_at: int) -> None:
    """Two attempts: the first stopped at ``failed_at`` (rank 0 may have read that step's batch
    before rank 1 raised), the second restarted at the checkpoint and re-read the same rows."""
    first, second = _attempts(ids_dir, rank)
    assert [line["step"] for line in second] == list(range(checkpoint_step, STEPS))
    assert [line["step"] for line in first][:failed_at] == list(range(failed_at))
    assert len(first) <= failed_at + 1
    replayed = {line["step"]: line["ids"] for line in second}
    for line in first[checkpoint_step:]:
        assert line["ids"] == replayed[line["step"]], f"rank {rank} step {line['step']} re-read other rows"


def test_worker_failure_resumes_exactly(train_demo, baseline, tmp_path):
    from microdit.train.trainer import run_training

    ids_dir = tmp_path / "ids"
    recipe = tiny_recipe(
        train_demo,
        tmp_path,
        "baseline",  # same name: same seeds everywhere
        {"debug": {"fail_at_step": FAIL_AT, "record_ids_dir": str(ids_dir)}, "tracking.max_failures": 1},
    )
    summary = run_training(recipe)

    assert (tmp_path / "runs" / "baseline" / f"failed_once_at_{FAIL_AT}").exists()
    assert summary.global_step == baseline.summary.global_step == STEPS
    assert summary.images_seen == baseline.summary.images_seen == STEPS * BATCH
    _assert_same_rows_as_baseline(ids_dir, baseline)
    assert_same_weights(summary.weights, baseline.summary.weights)
    for rank in (0, 1):  # the retry restarted from the step-2 checkpoint
        _assert_resumed_at(ids_dir, rank, checkpoint_step=2, failed_at=FAIL_AT)
    (run,) = mlflow_runs(recipe.tracking.mlflow_uri, recipe.tracking.experiment, "baseline")
    assert run.info.status == "FINISHED" and run.info.run_id == summary.mlflow_run_id


@pytest.mark.slow  # two more 2-worker runs (~65 s on a loaded 2-core box); the default set stays < 3 min
def test_relaunched_driver_resumes_the_same_run(train_demo, baseline, tmp_path):
    from microdit.train.trainer import run_training

    ids_dir = tmp_path / "ids"
    failing = tiny_recipe(
        train_demo,
        tmp_path,
        "baseline",
        {"debug": {"fail_at_step": FAIL_AT + 2, "record_ids_dir": str(ids_dir)}, "tracking.max_failures": 0},
    )
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
    assert_same_weights(summary.weights, baseline.summary.weights)
    for rank in (0, 1):  # the relaunch resumed from the step-4 checkpoint
        _assert_resumed_at(ids_dir, rank, checkpoint_step=4, failed_at=FAIL_AT + 2)
