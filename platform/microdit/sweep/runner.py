"""Run a sweep: Tuner (or Tuner.restore) + searcher + budget guard, MLflow parent run, report.

Resume: the Tune experiment lives at ``<storage>/<sweep name>``; running the same command again
restores it (``Tuner.restore(..., resume_errored=True)``), the Optuna study continues from its
journal file, and trials reuse their MLflow runs (found by run name), so nothing is duplicated.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from microdit.config.sweep import SweepSpec
from microdit.tracking import finish_run, get_or_create_run, log_params, tracking_uri

log = logging.getLogger(__name__)


@dataclass
class SweepOutcome:
    name: str
    parent_run_id: str
    report: str
    finished: int
    stopped_early: int
    failed: int
    spent_usd: float
    wall_seconds: float


def predicted_trial_dollars(spec: SweepSpec, images_per_s: float = 20.0) -> float:
    """Dollars one trial commits: its dollar budget, else its images at an assumed speed."""
    from microdit.config.recipe import RecipeConfig

    if spec.trial_dollars is not None:
        return spec.trial_dollars
    recipe = RecipeConfig.from_dict(spec.trial_recipe(first_corner(spec), "predict"))
    images = spec.trial_images or sum(p.steps * p.batch_size for p in recipe.phases if p.steps)
    return images / images_per_s / 3600 * recipe.resources.hourly_price * recipe.resources.billed_devices


def first_corner(spec: SweepSpec) -> dict:
    """The first value of every swept key: a valid trial to probe data and prices with."""
    return {p.key: p.values[0] for p in spec.space}


def run_sweep(spec: SweepSpec, *, storage: str | None = None) -> SweepOutcome:
    from ray import tune

    from microdit.sweep.report import sweep_report
    from microdit.sweep.search import build_searcher
    from microdit.sweep.trial import run_trial
    from microdit.train.trainer import connect_ray, ensure_data

    started = time.perf_counter()
    # Intermediate results (training metrics forwarded from the workers) carry no FID yet; the
    # objectives arrive with the trial's final report.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    connect_ray()
    from microdit.config.recipe import RecipeConfig

    ensure_data(RecipeConfig.from_dict(spec.trial_recipe(first_corner(spec), "probe")))
    root = Path(storage or spec.storage_path or os.environ.get("MICRODIT_RUNS", "microdit_runs")).resolve()
    sweep_dir = root / "sweeps" / spec.name
    uri = tracking_uri(spec.mlflow_uri)
    parent_run_id, created = get_or_create_run(uri, spec.experiment, spec.name, "sweep",
                                               tags={"microdit.sweep_dir": str(sweep_dir)})
    if created:
        log_params(uri, parent_run_id, {
            "space": {p.key: f"{p.kind}{list(p.values)}" for p in spec.space},
            "objectives": [f"{o.metric}:{o.mode}" for o in spec.objectives], "algorithm": spec.algorithm,
            "trial_dollars": spec.trial_dollars, "trial_images": spec.trial_images,
            "budget_dollars": spec.budget_dollars, "max_trials": spec.max_trials})
    trainable = tune.with_resources(run_trial, {"cpu": 0.01})
    config = {"spec_dict": spec_source(spec), "mlflow_uri": uri, "parent_run_id": parent_run_id,
              "train_storage": str(root / "trials")}
    experiment_path = str(sweep_dir / "tune")
    if tune.Tuner.can_restore(experiment_path):
        log.info("resuming sweep %s from %s", spec.name, experiment_path)
        tuner = tune.Tuner.restore(experiment_path, trainable, resume_errored=True, param_space=config)
    else:
        searcher = build_searcher(spec, sweep_dir, predicted_trial_dollars(spec))
        scheduler = None
        if spec.scheduler["type"] == "asha":
            from ray.tune.schedulers import ASHAScheduler

            scheduler = ASHAScheduler(metric=spec.scheduler["metric"], mode=spec.scheduler.get("mode", "min"),
                                      time_attr="training_iteration",
                                      grace_period=spec.scheduler.get("grace_period", 1),
                                      reduction_factor=spec.scheduler.get("reduction_factor", 2),
                                      max_t=spec.scheduler.get("max_t", 10_000))
        import ray.tune

        tuner = tune.Tuner(
            trainable, param_space=config,
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=spec.num_trials(),
                                        max_concurrent_trials=spec.max_concurrent),
            run_config=ray.tune.RunConfig(name="tune", storage_path=str(sweep_dir)),
        )
    results = tuner.fit()
    report = sweep_report(spec, uri, parent_run_id, results, sweep_dir)
    finish_run(uri, parent_run_id, "FINISHED")
    return SweepOutcome(spec.name, parent_run_id, report.text, report.finished, report.stopped_early, report.failed,
                        report.spent_usd, time.perf_counter() - started)


def spec_source(spec: SweepSpec) -> dict:
    """The spec as a self-contained mapping (base recipe inlined) for trials on any node."""
    data = {
        "name": spec.name, "base": spec.base,
        "space": {p.key: {p.kind: list(p.values)} for p in spec.space},
        "objectives": [{"metric": o.metric, "mode": o.mode} for o in spec.objectives],
        "trial_budget": {"dollars": spec.trial_dollars} if spec.trial_dollars is not None else
        {"images": spec.trial_images},
        "budget": {"max_trials": spec.max_trials, "max_concurrent": spec.max_concurrent,
                   **({"dollars": spec.budget_dollars} if spec.budget_dollars is not None else {})},
        "scheduler": spec.scheduler, "search": {"algorithm": spec.algorithm, "seed": spec.seed},
        "evaluation": spec.evaluation, "experiment": spec.experiment,
    }
    if spec.mlflow_uri:
        data["mlflow_uri"] = spec.mlflow_uri
    return data
