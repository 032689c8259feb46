"""One sweep trial: a Tune function that trains its own TorchTrainer, evaluates, reports.

SPEC §8: in Ray 2.60 the only Tune + Train pattern is a Tune function trial that builds and
fits its own ``TorchTrainer``; worker metrics reach Tune through ``TuneReportCallback`` (so
ASHA can stop a trial on an intermediate metric), and the trial reports its final metrics with
``ray.tune.report``. The trial's MLflow run is a child of the sweep's run.
"""

from __future__ import annotations

import time
from typing import Any

from ray import tune

from microdit.config.recipe import RecipeConfig, deviation_from_official
from microdit.config.sweep import load_sweep
from microdit.sweep.search import param_name


def trial_values(spec, config: dict[str, Any]) -> dict[str, Any]:
    """Tune's x0, x1... back to dotted recipe keys (ints kept as ints)."""
    values = {}
    for i, p in enumerate(spec.space):
        value = config[param_name(i)]
        if p.is_bundle and isinstance(value, int):
            value = p.values[value]
        values[p.key] = int(value) if p.kind == "int" else value
    return values


def _label(value: Any) -> Any:
    """A bundle's overrides as one short label (e.g. 'masking=naive,mixer_depth=0')."""
    if isinstance(value, dict):
        return ",".join(f"{k.split('.')[-1]}={v}" for k, v in value.items())
    return value


def run_trial(config: dict[str, Any]) -> None:
    from ray.tune.integration.ray_train import TuneReportCallback

    from microdit.evaluate.pipeline import EvaluationConfig, evaluate_weights
    from microdit.tracking import client, finish_run, log_params, metric_key
    from microdit.train.trainer import run_training

    trial_started = time.time()
    spec = load_sweep(config["spec_dict"])
    context = tune.get_context()
    trial_id = context.get_trial_id()
    values = trial_values(spec, config)
    recipe_dict = spec.trial_recipe(values, f"{spec.name}-{trial_id}")
    recipe_dict.setdefault("tracking", {})
    recipe_dict["tracking"].update({"experiment": spec.experiment, "mlflow_uri": config["mlflow_uri"],
                                    "storage_path": config["train_storage"]})
    recipe = RecipeConfig.from_dict(recipe_dict)
    summary = run_training(recipe, parent_run_id=config["parent_run_id"], callbacks=[TuneReportCallback()],
                           mlflow_tags={"tune.trial_id": trial_id, "microdit.sweep": spec.name})
    uri = config["mlflow_uri"]
    log_params(uri, summary.mlflow_run_id, {f"sweep.{metric_key(k)}": _label(v) for k, v in values.items()})
    metrics: dict[str, float] = {"cost_usd": summary.cost_usd, "gpu_hours": summary.gpu_hours,
                                 "images_seen": float(summary.images_seen), "train_seconds": summary.wall_seconds}
    if summary.first_step_wall:  # Tune + TorchTrainer start-up until the first optimizer step
        metrics["startup_seconds"] = summary.first_step_wall - trial_started
    needs_eval = bool(spec.evaluation.overrides()) or any(o.metric.startswith(("fid", "clip")) for o in spec.objectives)
    if summary.weights and needs_eval:
        evaluation = EvaluationConfig(**{"reference": "demo_real_heldout", **spec.evaluation.overrides()})
        results = evaluate_weights(summary.weights, evaluation)
        # Evaluation time is billed like training: the trial holds its devices meanwhile.
        price = recipe.resources.hourly_price * recipe.resources.billed_devices
        metrics["eval_cost_usd"] = results["eval_seconds"] / 3600 * price
        metrics["cost_usd"] += metrics["eval_cost_usd"]
        metrics.update({k: float(v) for k, v in results.items()})
    mlflow_client = client(uri)
    for key, value in metrics.items():
        mlflow_client.log_metric(summary.mlflow_run_id, key, value)
    if needs_eval:
        deviation = deviation_from_official(evaluation.steps, evaluation.guidance) if summary.weights else None
        mlflow_client.set_tag(summary.mlflow_run_id, "microdit.eval_protocol",
                              deviation or "official: 30 Heun steps, guidance 5")
    mlflow_client.set_tag(summary.mlflow_run_id, "microdit.trial_status", "finished")
    finish_run(uri, summary.mlflow_run_id, "FINISHED")
    tune.report({**metrics, "budget_done": 1.0, "mlflow_run_id": summary.mlflow_run_id})
