"""Helpers for the training tests (imported by name: pytest puts this directory on sys.path)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

STEPS = 6  # 6 steps x 4 rows per worker = 24 rows per worker: inside one pass of the tiny sets
BATCH = 8


def read_ids(directory: Path) -> dict[int, dict[tuple[int, int], list[str]]]:
    """``debug.record_ids_dir`` files -> {rank: {(step, micro): ids}}; a replayed step keeps its last line."""
    out: dict[int, dict[tuple[int, int], list[str]]] = {}
    for path in sorted(Path(directory).glob("ids_rank*.jsonl")):
        rank = int(path.stem.removeprefix("ids_rank"))
        per_step: dict[tuple[int, int], list[str]] = {}
        for line in path.read_text().splitlines():
            row = json.loads(line)
            per_step[(row["step"], row["micro"])] = row["ids"]
        out[rank] = per_step
    return out


def read_id_lines(directory: Path, rank: int) -> list[dict[str, Any]]:
    """Every line rank ``rank`` wrote, in order (replayed steps included)."""
    path = Path(directory) / f"ids_rank{rank}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def mlflow_runs(uri: str, experiment: str, run_name: str) -> list:
    """Every MLflow run tagged with this Ray run name."""
    from mlflow.tracking import MlflowClient

    from microdit.tracking import RUN_NAME_TAG

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id], filter_string=f"tags.`{RUN_NAME_TAG}` = '{run_name}'")
