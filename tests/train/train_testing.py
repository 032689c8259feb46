"""Helpers for the training tests (imported by name: pytest puts this directory on sys.path)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STEPS = 6  # 6 steps x 4 rows per worker = 24 rows per worker: inside one pass of the tiny sets
BATCH = 8


@dataclass
class Baseline:
    recipe: Any  # RecipeConfig
    summary: Any  # TrainSummary
    ids_dir: Path
    root: Path
    console: str = ""  # what the run printed (its progress view, off a terminal)


def tiny_recipe(demo: dict[str, Path], root: Path, name: str, overrides: dict[str, Any] | None = None):
    """The demo recipe cut to one tiny phase (Nano_4, 6 steps of 8) on 2 CPU workers, tracked under ``root``."""
    from microdit.config.recipe import load_recipe

    phase = {
        "name": "masked",
        "resolution": 32,
        "mask_ratio": 0.5,
        "steps": STEPS,
        "batch_size": BATCH,
        "lr": 1.0e-3,
        "lr_schedule": "cosine",
        "warmup_steps": 2,
        "grad_clip": 1.0,
        "ema_half_life_images": 32,  # final weights are the EMA, so resume must restore it exactly
        "ema_start_images": 8,
    }
    base = {
        "name": name,
        "model": {"size": "MicroDiT_Nano_4"},
        "phases": [phase],
        "data.real": str(demo["demo_real"]),
        "data.synthetic": str(demo["demo_synthetic"]),
        "data.shuffle_buffer": 16,
        "resources.num_workers": 2,
        "resources.cpus_per_worker": 0.5,
        "tracking.mlflow_uri": f"sqlite:///{root / 'mlflow.db'}",
        "tracking.storage_path": str(root / "runs"),
        "tracking.experiment": "test-train",
        "tracking.log_every_steps": 2,
        "tracking.checkpoint_every_steps": 2,
        "tracking.keep_checkpoints": 2,
        "tracking.max_failures": 0,
        "tracking.sample_steps": 4,  # the phase-end sample grid: cheap, still exercised
    }
    return load_recipe("demo", {**base, **(overrides or {})})


def final_state(weights: str | Path) -> dict[str, Any]:
    """The state dict and metadata in a run's ``final_weights.pt``."""
    import torch

    blob = torch.load(weights, map_location="cpu", weights_only=False)
    return {"state_dict": blob["state_dict"], "meta": blob["meta"]}


def assert_same_weights(a: str | Path, b: str | Path) -> None:
    """Bitwise-equal final weights: one torch thread per worker, per-step seeded randomness, the
    same rows per step and a 2-rank all-reduce make a resumed run replay the baseline exactly."""
    import torch

    left, right = final_state(a)["state_dict"], final_state(b)["state_dict"]
    assert left.keys() == right.keys()
    differ = [k for k in left if not torch.equal(left[k], right[k])]
    assert not differ, f"{len(differ)} tensors differ from the uninterrupted run, e.g. {differ[:3]}"


def read_ids(directory: Path) -> dict[int, dict[tuple[int, int], list[str]]]:
    """``debug.record_ids_dir`` files -> {rank: {(step, micro): ids}}; a replayed step keeps its last line."""
    out: dict[int, dict[tuple[int, int], list[str]]] = {}
    for path in sorted(Path(directory).glob("ids_rank*.jsonl")):
        rank = int(path.stem.removeprefix("ids_rank"))
        out[rank] = {(row["step"], row["micro"]): row["ids"] for row in read_id_lines(directory, rank)}
    return out


def read_id_lines(directory: Path, rank: int) -> list[dict[str, Any]]:
    """Every line rank ``rank`` wrote, in order (a retried attempt's replayed steps included)."""
    path = Path(directory) / f"ids_rank{rank}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def mlflow_client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def mlflow_runs(uri: str, experiment: str, run_name: str) -> list:
    """Every MLflow run tagged with this Ray run name."""
    from microdit.tracking import RUN_NAME_TAG

    client = mlflow_client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id], filter_string=f"tags.`{RUN_NAME_TAG}` = '{run_name}'")
