"""Run a sweep: Tuner (or Tuner.restore) + searcher + budget guard, MLflow parent run, report.

Where: ``<root>/sweeps/<sweep name>/`` holds the Tune experiment (``tune/``), the resolved spec
and the Optuna journal; trial runs live in ``<root>/trials/``. ``<root>`` is ``--storage``, the
spec's ``storage_path`` or the storage root (``$MICRODIT_ROOT``, default ``~/microdit``), a local
or shared path or a URI, never the working directory.

Resume: running the same command again restores the Tune experiment
(``Tuner.restore(..., resume_errored=True)``), the Optuna study continues (from its journal file
on a local or shared root; on an object store from the searcher state Tune saves with the
experiment), and trials reuse their MLflow runs (found by run name), so nothing is duplicated.
The resolved spec is stored beside it (``spec.json``) on every start; a resume whose spec differs
is refused with the changed keys, unless ``allow_changed_spec`` (``--allow-changed-spec``).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

from microdit import storage as storage_module
from microdit.config.sweep import SweepSpec, spec_changes
from microdit.errors import ConfigError
from microdit.tracking import finish_run, get_or_create_run, log_params, tracking_uri

log = logging.getLogger(__name__)
SPEC_FILE = "spec.json"  # the resolved spec (``SweepSpec.fingerprint()``) in the sweep's directory


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
    best_trial: str | None = None  # run name of the finished trial best on the first objective


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


def run_sweep(spec: SweepSpec, *, storage: str | None = None, allow_changed_spec: bool = False) -> SweepOutcome:
    """Run (or resume) the sweep; one process per sweep name and storage root on a machine."""
    from microdit.exclusive import held_exclusively

    root = sweep_root(spec, storage)
    sweep_dir = storage_module.join(root, "sweeps", spec.name)
    with held_exclusively("sweep", spec.name, sweep_dir, "Wait for it to finish (rerunning it later resumes it), "
                          "or give this sweep another `name:` in its spec."):
        return _run_sweep(spec, root, sweep_dir, allow_changed_spec)


def _run_sweep(spec: SweepSpec, root: str, sweep_dir: str, allow_changed_spec: bool) -> SweepOutcome:
    from ray import tune

    from microdit.cluster import check_tracking_fits_cluster, connect_ray
    from microdit.console import tune_verbosity
    from microdit.sweep.report import sweep_report
    from microdit.sweep.search import build_searcher
    from microdit.sweep.trial import own_errors_are_final, run_trial

    started = time.perf_counter()
    experiment_path = storage_module.join(sweep_dir, "tune")
    resuming = tune.Tuner.can_restore(experiment_path)
    record_spec(sweep_dir, spec, resuming=resuming, allow_changed_spec=allow_changed_spec)
    # Intermediate results (training metrics forwarded from the workers) carry no FID yet; the
    # objectives arrive with the trial's final report.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    connect_ray()
    uri = tracking_uri(spec.mlflow_uri)
    check_tracking_fits_cluster(uri)
    overhead_seconds, overhead_usd = prepare_shared_work(spec)
    parent_run_id, created = get_or_create_run(uri, spec.experiment, spec.name, "sweep",
                                               tags={"microdit.sweep_dir": sweep_dir})
    record_overhead(uri, parent_run_id, overhead_seconds, overhead_usd)
    if created:
        log_params(uri, parent_run_id, {
            "space": {p.key: f"{p.kind}{list(p.values)}" for p in spec.space},
            "objectives": [f"{o.metric}:{o.mode}" for o in spec.objectives], "algorithm": spec.algorithm,
            "trial_dollars": spec.trial_dollars, "trial_images": spec.trial_images,
            "budget_dollars": spec.budget_dollars, "max_trials": spec.max_trials})
    trainable = tune.with_resources(run_trial, {"cpu": 0.01})
    config = {"spec_dict": spec_source(spec), "mlflow_uri": uri, "parent_run_id": parent_run_id,
              "train_storage": storage_module.join(root, "trials")}
    if resuming:
        log.info("resuming sweep %s from %s", spec.name, experiment_path)
        tuner = tune.Tuner.restore(experiment_path, trainable, resume_errored=True, param_space=config)
    else:
        searcher = build_searcher(spec, sweep_dir, predicted_trial_dollars(spec), tracking=(uri, parent_run_id))
        scheduler = build_scheduler(spec, uri, parent_run_id)
        import ray.tune

        tuner = tune.Tuner(
            trainable, param_space=config,
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=spec.num_trials(),
                                        max_concurrent_trials=spec.max_concurrent),
            run_config=ray.tune.RunConfig(name="tune", storage_path=sweep_dir, verbose=tune_verbosity(),
                                          callbacks=[own_errors_are_final(), trial_lines(spec)],
                                          failure_config=ray.tune.FailureConfig(max_failures=spec.trial_retries)),
        )
    results = tuner.fit()
    report = sweep_report(spec, uri, parent_run_id, results, sweep_dir)
    finish_run(uri, parent_run_id, "FINISHED")
    return SweepOutcome(spec.name, parent_run_id, report.text, report.finished, report.stopped_early, report.failed,
                        report.spent_usd, time.perf_counter() - started, best_trial(report, spec))


def build_scheduler(spec: SweepSpec, uri: str, parent_run_id: str):
    """Tune's ASHA on a training metric, our ``cost_asha`` on the milestone readings, or none."""
    scheduler = spec.scheduler
    if scheduler.type == "asha":
        from ray.tune.schedulers import ASHAScheduler

        return ASHAScheduler(metric=scheduler.metric, mode=scheduler.mode or "min", time_attr="training_iteration",
                             grace_period=scheduler.grace_period, reduction_factor=scheduler.reduction_factor,
                             max_t=scheduler.max_t)
    if scheduler.type == "cost_asha":
        from microdit.sweep.halving import CostHalving
        from microdit.sweep.search import param_name

        keys = [p.key for p in spec.space]
        return CostHalving(scheduler.metric, scheduler.mode, scheduler.rung_dollars(spec.trial_dollars),
                           scheduler.reduction_factor, scheduler.brackets, scheduler.noise_k,
                           tracking=(uri, parent_run_id),
                           group_params=[param_name(keys.index(k)) for k in scheduler.group_by])
    return None


def best_trial(report, spec: SweepSpec) -> str | None:
    """The finished trial with the best value of the first objective (its run name), if any."""
    objective = spec.objectives[0]
    scored = [r for r in report.rows if r.get("status") == "finished" and isinstance(r.get(objective.metric), float)]
    if not scored:
        return None
    pick = min if objective.mode == "min" else max
    return pick(scored, key=lambda r: r[objective.metric])["trial"]


def trial_lines(spec: SweepSpec):
    """The console's one-line-per-event trial reporter for this spec."""
    from microdit.config.sweep import value_label
    from microdit.console import make_trial_lines
    from microdit.sweep.trial import trial_values

    def params(config: dict) -> str:  # a bundle's label names its own keys
        return ", ".join(value_label(v) if isinstance(v, dict) else f"{k}={v}"
                         for k, v in trial_values(spec, config).items())

    return make_trial_lines(spec.num_trials(), params, spec.trial_images, spec.trial_dollars)


def sweep_root(spec: SweepSpec, storage: str | None = None) -> str:
    """The sweep's storage root, resolved once here: ``--storage``, the spec's ``storage_path``, or
    the storage root (``$MICRODIT_ROOT`` or ``~/microdit``)."""
    configured = storage or spec.storage_path
    return storage_module.resolve(configured) if configured else storage_module.root()


def prepare_shared_work(spec: SweepSpec) -> tuple[float, float]:
    """Work every trial would otherwise repeat, done once in the driver before the first trial:
    the demo data (when the spec uses it) and, for CPU trials, the FID reference statistics (cached by
    content, so trials only read them). GPU trials decode the reference in bf16 on their GPUs, which the
    cache key tells apart from a CPU decode: the first trial builds that entry, sharded over its
    workers, and later trials read it. Returns (seconds, dollars at one trial's device price): the
    sweep's overhead."""
    from microdit.config.recipe import RecipeConfig
    from microdit.train.trainer import ensure_data

    started = time.perf_counter()
    probe = RecipeConfig.from_dict(spec.trial_recipe(first_corner(spec), "probe"))
    ensure_data(probe)
    if trial_needs_evaluation(spec) and not probe.resources.use_gpu:
        from microdit.config.sweep import final_evaluation
        from microdit.evaluate.pipeline import prepare_reference

        prepare_reference(final_evaluation(spec))
    seconds = time.perf_counter() - started
    return seconds, seconds / 3600 * probe.resources.hourly_price * probe.resources.billed_devices


def trial_needs_evaluation(spec: SweepSpec) -> bool:
    return bool(spec.evaluation.overrides()) or any(o.metric.startswith(("fid", "clip")) for o in spec.objectives)


def record_overhead(uri: str, parent_run_id: str, seconds: float, dollars: float) -> None:
    """Add this start's shared work to the parent run's ``overhead_usd`` (a resume adds its own)."""
    from microdit.tracking import client

    mlflow_client = client(uri)
    previous = mlflow_client.get_run(parent_run_id).data.metrics
    step = len(mlflow_client.get_metric_history(parent_run_id, "overhead_usd"))
    mlflow_client.log_metric(parent_run_id, "overhead_seconds", previous.get("overhead_seconds", 0.0) + seconds, step=step)
    mlflow_client.log_metric(parent_run_id, "overhead_usd", previous.get("overhead_usd", 0.0) + dollars, step=step)


def spec_source(spec: SweepSpec) -> dict:
    """The spec as a self-contained mapping (base recipe inlined) for trials on any node."""
    return spec.to_dict()


def record_spec(sweep_dir: str, spec: SweepSpec, *, resuming: bool, allow_changed_spec: bool = False) -> None:
    """Store the resolved spec in ``sweep_dir``; on a resume, refuse one that changed.

    A resumed sweep keeps its searcher state, finished trials and budget accounting, so a changed
    space, objective or budget would silently mix two experiments: the ``ConfigError`` names every
    changed key (``space.phases[0].mask_ratio``, ``budget.dollars``). ``allow_changed_spec`` resumes
    anyway (logged) and records the new spec.
    """
    path = storage_module.join(sweep_dir, SPEC_FILE)
    new = spec.fingerprint()
    if resuming and storage_module.exists(path):
        try:
            old = storage_module.read_json(path)
        except (OSError, ValueError) as err:
            raise ConfigError(f"sweep {spec.name}: cannot read the stored spec {path} ({err})") from None
        changes = spec_changes(old, new)
        if not changes:
            return
        listing = "; ".join(f"{key}: {_short(a)} -> {_short(b)}" for key, a, b in changes)
        if not allow_changed_spec:
            raise ConfigError(
                f"sweep {spec.name}: the spec changed since this sweep started ({path}): {listing}. "
                "Resume with the same spec, start a new sweep (another name or --storage), "
                "or pass --allow-changed-spec to resume with the new one"
            )
        log.warning("sweep %s resumes with a changed spec (--allow-changed-spec): %s", spec.name, listing)
    storage_module.write_json(path, new)


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
