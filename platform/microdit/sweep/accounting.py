"""What a sweep cost, as plain functions: each trial's final numbers and the sweep's total.

A trial's cost is its training (device-hours of the Train run, checkpointed across retries) plus
its evaluation (the seconds the trial held its devices to sample and score, at the same price).
Work every trial would otherwise repeat — building the demo data, the FID reference statistics —
runs once in the driver before the first trial and is the sweep's overhead, billed to no trial.
So: sweep total = sum over trials of ``final/cost_usd`` + ``overhead_usd``.

A trial a ``cost_asha`` scheduler stops is billed by the scheduler (``bill_stopped_trial``): its spend at
the reading it was stopped on (training and every milestone evaluation) plus the seconds it trained on
until Tune stopped it, at its devices' price.
"""

from __future__ import annotations

from typing import Any

FINAL_COST = "final/cost_usd"


def trial_final_metrics(train: dict[str, float], evaluation: dict[str, float] | None,
                        price_per_device_hour: float, devices: int) -> dict[str, float]:
    """The authoritative final metrics of one trial (logged once, one step past its training).

    ``train``: cost_usd, gpu_hours, images_seen, global_step of the Train run; ``evaluation``: the
    evaluation pipeline's metrics (``eval_seconds`` is billed) or None."""
    eval_hours = (evaluation or {}).get("eval_seconds", 0.0) / 3600 * devices
    eval_usd = eval_hours * price_per_device_hour
    train_usd = float(train["cost_usd"])
    metrics = {
        "final/train_usd": train_usd,
        "final/eval_usd": eval_usd,
        FINAL_COST: train_usd + eval_usd,
        "final/gpu_hours": float(train["gpu_hours"]) + eval_hours,
        "final/images_seen": float(train["images_seen"]),
        "final/global_step": float(train["global_step"]),
    }
    metrics.update({k: float(v) for k, v in (evaluation or {}).items()})
    # the names objectives use: MLflow's latest value of each is the final one
    metrics.update({"cost_usd": metrics[FINAL_COST], "eval_cost_usd": eval_usd, "gpu_hours": metrics["final/gpu_hours"],
                    "images_seen": metrics["final/images_seen"]})
    return metrics


def trial_cost(row: dict[str, Any]) -> float:
    """A trial's total cost from its MLflow metrics (older runs without ``final/*``: ``cost_usd``)."""
    return float(row.get(FINAL_COST, row.get("cost_usd", 0.0)))


def sweep_total(rows: list[dict[str, Any]], overhead_usd: float) -> float:
    """Everything the sweep spent: every trial (finished, stopped or failed) plus the shared overhead."""
    return sum(trial_cost(r) for r in rows) + overhead_usd


def usd(amount: float) -> str:
    """Money for people: cents above $1 (``$1,890.76``), else 3 significant digits (``$0.000134``)."""
    if abs(amount) >= 1:
        return f"${amount:,.2f}"
    return f"${amount:.3g}" if amount else "$0"


def bill_stopped_trial(uri: str, parent_run_id: str, trial_id: str, *, spent_usd: float, lag_usd: float,
                       stopped_at_usd: float, reason: str) -> str | None:
    """Write a stopped trial's final cost and why it stopped on its MLflow run (found by its
    ``tune.trial_id`` tag under the sweep's run); returns the run id (None when it has no run)."""
    from microdit.tracking import client

    mlflow_client = client(uri)
    experiment = mlflow_client.get_run(parent_run_id).info.experiment_id
    runs = mlflow_client.search_runs([experiment], max_results=1, filter_string=(
        f"tags.`mlflow.parentRunId` = '{parent_run_id}' and tags.`tune.trial_id` = '{trial_id}'"))
    if not runs:
        return None
    run_id = runs[0].info.run_id
    for key, value in {"final/train_usd": spent_usd + lag_usd, "final/eval_usd": 0.0,
                       FINAL_COST: spent_usd + lag_usd, "final/stop_lag_usd": lag_usd,
                       "stopped_at_usd": stopped_at_usd}.items():
        mlflow_client.log_metric(run_id, key, value)
    mlflow_client.set_tag(run_id, "microdit.trial_status", "stopped_early")
    mlflow_client.set_tag(run_id, "microdit.stop_reason", reason[:5000])
    return run_id
