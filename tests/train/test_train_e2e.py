"""End to end on the real local Ray cluster with 2 CPU workers: weights, MLflow record, counts, NaN stop."""

from __future__ import annotations

import time

import pytest
import torch
from train_testing import BATCH, STEPS, final_state, mlflow_client, mlflow_runs, read_ids, tiny_recipe


def test_tiny_run_end_to_end(baseline):
    from microdit.train.state import load_weights

    summary, recipe = baseline.summary, baseline.recipe
    assert summary.global_step == STEPS
    assert summary.images_seen == STEPS * BATCH
    assert summary.cost_usd > 0 and summary.gpu_hours > 0

    final = final_state(summary.weights)
    assert final["meta"]["ema"] is True  # the phase tracks an EMA
    model = load_weights(summary.weights)  # plain file, no Ray
    assert model.config.patch_size == 4
    # exactly the last checkpoint's EMA average (not its live weights), and loaded as saved
    from pathlib import Path

    from microdit.train.state import load_state

    last = load_state(Path(summary.weights).parent)
    assert last["ema"]["updates"] == STEPS - 8 // BATCH  # ema_start_images 8: no update until 8 images are past
    moved = 0
    for key, value in final["state_dict"].items():
        assert torch.equal(model.state_dict()[key], value), key
        assert torch.equal(value, last["ema"]["shadow"][key].float()), key
        moved += not torch.equal(value, last["model"][key].float())
    assert moved > 0.5 * len(final["state_dict"])  # the average is not the live weights
    assert load_weights(Path(summary.weights).parent, which="live").state_dict()["final_layer.linear.weight"] \
        .equal(last["model"]["final_layer.linear.weight"].float())
    latent = torch.zeros(2, model.config.latent_channels, 32, 32)
    caption = torch.zeros(2, 32, model.config.caption_dim)
    with torch.no_grad():
        out = model(latent, torch.zeros(2), caption)
    assert out.sample.shape == latent.shape and torch.isfinite(out.sample).all()

    uri = recipe.tracking.mlflow_uri
    runs = mlflow_runs(uri, recipe.tracking.experiment, "baseline")
    assert len(runs) == 1 and runs[0].info.run_id == summary.mlflow_run_id
    run = runs[0]
    assert run.info.status == "FINISHED"
    for key in ("loss", "images_seen", "cost_usd", "images_per_s", "lr", "grad_norm", "gpu_hours"):
        assert key in run.data.metrics, key
    history = mlflow_client(uri).get_metric_history(run.info.run_id, "images_seen")
    assert [m.step for m in history] == list(range(2, STEPS + 1, 2))  # log_every_steps = 2
    assert history[-1].value == STEPS * BATCH
    assert run.data.metrics["final/global_step"] == STEPS
    assert run.data.params["phases.0.batch_size"] == str(BATCH)
    assert run.data.params["model.size"] == "MicroDiT_Nano_4"
    assert run.data.params["resolved_model.caption_dim"] == "384"  # taken from the data's text encoder
    artifacts = {a.path for a in mlflow_client(uri).list_artifacts(run.info.run_id)}
    assert {"recipe.yaml", "recipe.json"} <= artifacts
    # the final weights sit in the run's last checkpoint, in its storage; the run says where
    assert run.data.tags["microdit.weights"] == summary.weights
    assert summary.weights.startswith(recipe.tracking.storage_path + "/baseline/checkpoint_")
    assert summary.weights.endswith("/final_weights.pt")


def test_each_rank_reads_its_own_rows_once(baseline):
    """Within one pass: no row twice on a rank, the ranks' rows disjoint, the mix exact per step."""
    ids = read_ids(baseline.ids_dir)
    assert sorted(ids) == [0, 1]
    seen = {rank: [i for key in sorted(steps) for i in steps[key]] for rank, steps in ids.items()}
    for rank, rows in seen.items():
        assert len(rows) == STEPS * BATCH // 2
        assert len(set(rows)) == len(rows), f"rank {rank} read a row twice"
    assert not set(seen[0]) & set(seen[1])


def test_nan_loss_stops_with_step_and_phase(train_demo, tmp_path):
    from microdit.train.trainer import TrainingStopped, run_training

    recipe = tiny_recipe(
        train_demo, tmp_path, "nan", {"debug": {"nan_at_step": 3}, "tracking.max_failures": 2}
    )
    started = time.perf_counter()
    with pytest.raises(TrainingStopped) as info:
        run_training(recipe)
    elapsed = time.perf_counter() - started
    message = str(info.value)
    assert "step 3" in message and "phase 0 'masked'" in message, message
    assert elapsed < 120, f"NaN stop took {elapsed:.0f} s"
    (run,) = mlflow_runs(recipe.tracking.mlflow_uri, recipe.tracking.experiment, "nan")
    assert run.info.status == "FAILED"
    assert "step 3" in run.data.tags["microdit.stop_reason"]
    # no retry: the one-time failure marker of fail_at_step is not involved, and no second attempt ran
    assert run.data.metrics["images_seen"] == 2 * BATCH  # logged at step 2, never past step 3


def test_evaluate_cli_finds_the_final_weights_by_run_name(baseline, train_demo, capsys):
    """``microdit evaluate --checkpoint <run name>``: the weights come from the run's ``microdit.weights``
    tag (its last checkpoint) and the FID lands on that same training run."""
    from microdit.cli.main import main

    uri = baseline.recipe.tracking.mlflow_uri
    code = main(["evaluate", "--checkpoint", "baseline", "--reference", str(train_demo["demo_real_heldout"]),
                 "--num-samples", "8", "--steps", "2", "--guidance", "2", "--mlflow-uri", uri])
    assert code == 0
    printed = capsys.readouterr().out
    run = mlflow_client(uri).get_run(baseline.summary.mlflow_run_id)
    assert f"(MLflow run {run.info.run_id})" in printed
    assert run.data.metrics["fid_8"] > 0 and f"fid_8={run.data.metrics['fid_8']:.4g}" in printed
    assert run.data.tags["microdit.eval_protocol"].startswith("2 Heun steps")
    # off a terminal each progress view is one summary line with its rate
    progress = [line for line in printed.splitlines() if line.startswith(("generate:", "inception:"))]
    assert [line.split(" · ")[0] for line in progress] == ["generate: 8/8 img (100%)", "inception: 8/8 img (100%)"]
    assert all("img/s" in line for line in progress), progress
    assert main(["evaluate", "--checkpoint", "no-such-run", "--mlflow-uri", uri]) == 2

    # the same evaluation on a Ray Train worker: same samples, same FID; the device time is billed
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", baseline.summary.weights, "--reference",
                 str(train_demo["demo_real_heldout"]), "--num-samples", "8", "--steps", "2", "--guidance", "2",
                 "--mlflow-uri", uri, "--workers", "1", "--cpus-per-worker", "0.5"]) == 0
    eval_run_id = capsys.readouterr().out.rsplit("(MLflow run ", 1)[1].split(")")[0]
    on_worker = mlflow_client(uri).get_run(eval_run_id).data.metrics  # a path was given: a new evaluate run
    assert on_worker["fid_8"] == pytest.approx(run.data.metrics["fid_8"], rel=1e-6)
    assert on_worker["eval_cost_usd"] == pytest.approx(on_worker["eval_device_hours"] * 0.05, rel=1e-12)  # CPU $/h
    assert on_worker["eval_device_hours"] == pytest.approx(on_worker["eval_seconds"] / 3600, rel=1e-12)
