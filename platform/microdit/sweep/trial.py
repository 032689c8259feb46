"""One sweep trial: a Tune function that trains its own TorchTrainer, evaluates, reports.

SPEC §8: in Ray 2.60 the only Tune + Train pattern is a Tune function trial that builds and
fits its own ``TorchTrainer``; worker metrics reach Tune through ``TuneReportCallback`` (so
ASHA can stop a trial on an intermediate metric), and the trial reports its final metrics with
``ray.tune.report``. The trial's MLflow run is a child of the sweep's run.

Failures: a trial whose process or node is lost (Ray reports the trial actor dead) is rerun by
Tune (``FailureConfig(max_failures=spec.trial_retries)``); the rerun trains under the same Train
run name, so it resumes from that run's last checkpoint, and its MLflow run counts the attempts
(``microdit.trial_attempts``, shown by the report). A trial whose own code raised (a bad value, a
non-finite loss, a Train run that used up its own retries) reports ``trial_own_error`` just before
the error reaches Tune: ``own_errors_are_final`` then sets that trial's retries to 0, so it fails
once and is reported, and no budget is spent rerunning a deterministic failure.
"""

from __future__ import annotations

import time
from typing import Any

from ray import tune

from microdit.config.recipe import RecipeConfig, deviation_from_official
from microdit.config.sweep import final_evaluation, load_sweep, value_label
from microdit.sweep.accounting import trial_final_metrics
from microdit.sweep.search import REPLICATE, param_name
from microdit.tracking import metric_key

OWN_ERROR = "trial_own_error"  # in a trial's last report: its own code raised, do not rerun it
ATTEMPTS_TAG = "microdit.trial_attempts"  # on the trial's MLflow run: 1, then 2 after a rerun...
# Ray's errors for a lost process, node or object: the trial's code did nothing wrong
INFRASTRUCTURE_ERRORS = ("RayActorError", "ActorDiedError", "ActorUnavailableError", "NodeDiedError",
                         "WorkerCrashedError", "OwnerDiedError", "ObjectLostError", "LocalRayletDiedError",
                         "RaySystemError")


def is_infrastructure_failure(error: BaseException) -> bool:
    """Whether ``error`` (or what caused it) is Ray losing a process, node or object."""
    from ray import exceptions

    kinds = tuple(getattr(exceptions, name) for name in INFRASTRUCTURE_ERRORS if hasattr(exceptions, name))
    seen: BaseException | None = error
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, kinds):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def own_errors_are_final():
    """A Tune callback: a trial whose last report says its own code raised gets no rerun (Tune reruns
    a failed trial while its failures <= ``trial.max_failures``, read at the failure)."""
    from ray.tune import Callback

    class OwnErrorsAreFinal(Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            if result.get(OWN_ERROR):
                trial.max_failures = 0

    return OwnErrorsAreFinal()


def next_attempt(uri: str, experiment: str, run_name: str) -> tuple[int, str | None]:
    """(this attempt's number, the trial's existing MLflow run id or None): a rerun after a lost
    process finds the run the first attempt created and counts itself on it."""
    from microdit.tracking import client, find_run

    existing = find_run(uri, experiment, run_name)
    if existing is None:
        return 1, None
    attempt = int(client(uri).get_run(existing).data.tags.get(ATTEMPTS_TAG, "1")) + 1
    client(uri).set_tag(existing, ATTEMPTS_TAG, str(attempt))
    return attempt, existing


def trial_values(spec, config: dict[str, Any]) -> dict[str, Any]:
    """Tune's x0, x1... back to dotted recipe keys (ints kept as ints)."""
    values = {}
    for i, p in enumerate(spec.space):
        value = config[param_name(i)]
        if p.is_bundle and isinstance(value, int):
            value = p.values[value]
        values[p.key] = int(value) if p.kind == "int" else value
    return values


def trial_params(values: dict[str, Any], replicate: int, seeds: int | str) -> dict[str, Any]:
    """The trial's swept values as MLflow params, ``sweep.<key>`` (``phases.0.mask_ratio``: MLflow
    names), a bundle as its label, and ``sweep.replicate`` when the spec has several seeds: the
    report reads them back (``spec_key``) as the spec writes them."""
    params = {f"sweep.{metric_key(k)}": value_label(v) for k, v in values.items()}
    if seeds == "auto" or seeds > 1:
        params["sweep.replicate"] = replicate
    return params


def run_trial(config: dict[str, Any]) -> None:  # pragma: no mutate block (Tune/Train wiring: the e2e sweeps run it)
    """Train, evaluate and report one trial; an error of its own code is marked final (module docstring)."""
    try:
        _run_trial(config)
    except Exception as err:
        if not is_infrastructure_failure(err):
            tune.report({OWN_ERROR: 1.0})  # seen by own_errors_are_final before the error arrives
        raise


def _run_trial(config: dict[str, Any]) -> None:  # pragma: no mutate block
    from ray.tune.integration.ray_train import TuneReportCallback

    from microdit.console import configure_worker
    from microdit.evaluate.on_workers import evaluate_on_workers
    from microdit.sweep.runner import trial_needs_evaluation
    from microdit.tracking import client, finish_run, log_final_metrics
    from microdit.train.trainer import run_training

    configure_worker()
    trial_started = time.time()
    spec = load_sweep(config["spec_dict"])
    context = tune.get_context()
    trial_id = context.get_trial_id()
    values = trial_values(spec, config)
    replicate = int(config.get(REPLICATE, 0))
    recipe_dict = spec.trial_recipe(values, f"{spec.name}-{trial_id}", replicate)
    recipe_dict.setdefault("tracking", {})
    recipe_dict["tracking"].update({"experiment": spec.experiment, "mlflow_uri": config["mlflow_uri"],
                                    "storage_path": config["train_storage"]})
    recipe = RecipeConfig.from_dict(recipe_dict)
    params = trial_params(values, replicate, spec.seeds)  # logged before training: a failed trial keeps them
    attempt, _ = next_attempt(config["mlflow_uri"], spec.experiment, recipe.name)
    summary = run_training(recipe, parent_run_id=config["parent_run_id"], callbacks=[TuneReportCallback()],
                           mlflow_tags={"tune.trial_id": trial_id, "microdit.sweep": spec.name,
                                        ATTEMPTS_TAG: str(attempt)}, log_final=False, mlflow_params=params)
    uri = config["mlflow_uri"]
    mlflow_client = client(uri)
    results = None
    if summary.weights and trial_needs_evaluation(spec):
        evaluation = final_evaluation(spec)
        # on the trial's own workers and devices (a Train run like the training's), billed for that time
        results = evaluate_on_workers(summary.weights, evaluation, recipe.resources,
                                      storage_path=config["train_storage"], name=f"{recipe.name}-eval")
        deviation = deviation_from_official(evaluation.steps, evaluation.guidance)
        mlflow_client.set_tag(summary.mlflow_run_id, "microdit.eval_protocol",
                              deviation or "official: 30 Heun steps, guidance 5")
    train = {"cost_usd": summary.cost_usd, "gpu_hours": summary.gpu_hours, "images_seen": summary.images_seen,
             "global_step": summary.global_step}
    metrics = trial_final_metrics(train, results, recipe.resources.hourly_price, recipe.resources.billed_devices)
    metrics["train_seconds"] = summary.wall_seconds
    if summary.first_step_wall:  # Tune + TorchTrainer start-up until the first optimizer step
        metrics["startup_seconds"] = summary.first_step_wall - trial_started
    log_final_metrics(uri, summary.mlflow_run_id, metrics, summary.global_step)
    mlflow_client.set_tag(summary.mlflow_run_id, "microdit.trial_status", "finished")
    finish_run(uri, summary.mlflow_run_id, "FINISHED")
    tune.report({**metrics, "budget_done": 1.0, "mlflow_run_id": summary.mlflow_run_id})
