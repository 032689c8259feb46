"""The driver side of a training run: resolve the recipe, tie it to MLflow, fit a TorchTrainer.

``run_training`` connects to Ray (``microdit.cluster``: ``RAY_ADDRESS`` or a local loopback
cluster, the package shipped to every node), makes sure the data exists (the demo sets are built
on first use), resolves the model against the data (caption width, latent channels), finds or
creates the MLflow run tagged with the Ray run name (so relaunching the same recipe name resumes
both the Ray run and its MLflow record), and fits a Ray Train V2 ``TorchTrainer`` with a
deterministic run name (SPEC §8: then ``FailureConfig`` retries and a relaunched driver resume
from the latest checkpoint).

Locations are resolved here, once: the runs live at ``tracking.storage_path`` or
``<storage root>/runs`` (a local/shared path or a URI, handed to Ray untouched) and every data
set reference becomes an absolute location in the workers' copy of the recipe, so no worker
re-resolves anything from its own working directory or environment. The final weights come back
inside the run's last checkpoint (``final_weights.pt`` beside ``train_state.pt``), wherever the
storage is; their location is tagged on the MLflow run (``microdit.weights``).
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from microdit import storage
from microdit.cluster import check_tracking_fits_cluster, connect_ray
from microdit.config.model import ModelConfig
from microdit.config.overrides import config_changes, describe_changes, flatten
from microdit.config.recipe import RecipeConfig, deviation_from_official
from microdit.errors import ConfigError
from microdit.tracking import (
    client,
    find_run,
    finish_run,
    get_or_create_run,
    log_final_metrics,
    log_params,
    tracking_uri,
)

log = logging.getLogger(__name__)
DEMO_SETS = ("demo_real", "demo_synthetic", "demo_real_heldout")
RECIPE_ARTIFACT = "recipe.json"  # the resolved recipe, logged when the run is created
WEIGHTS_TAG = "microdit.weights"  # MLflow tag: location of the run's final weights


class TrainingStopped(RuntimeError):
    """The run ended early and cannot continue by retrying (e.g. a non-finite loss)."""


@dataclass
class TrainSummary:
    run_name: str
    mlflow_run_id: str
    storage: str
    global_step: int
    images_seen: int
    cost_usd: float
    gpu_hours: float
    weights: str | None  # location (path or URI) of final_weights.pt inside the last checkpoint
    wall_seconds: float
    first_step_wall: float | None = None  # time.time() when rank 0 finished its first step (this attempt)
    logging_errors: list[str] | None = None  # MLflow writes that failed on rank 0 (metrics lost)
    worker_package: str | None = None  # where rank 0 imported microdit from (the shipped copy on a cluster)


def ensure_data(recipe: RecipeConfig) -> None:
    """Build the demo sets when a recipe names them and they do not exist yet."""
    from microdit.data.manifest import resolve_set_path, set_exists

    refs = [r for r in (recipe.data.real, recipe.data.synthetic) if r]
    missing = [r for r in refs if not set_exists(r)]
    if not missing:
        return
    if all(r in DEMO_SETS for r in missing):
        from microdit.data.demo import ensure_demo_sets

        resolutions = sorted({p.resolution for p in recipe.phases})
        log.info("building the demo sets at %s px (first use)", resolutions)
        ensure_demo_sets(resolution=resolutions)
        return
    raise ConfigError(f"data: set(s) {missing} not found (looked under {resolve_set_path(missing[0])}); "
                      "run `microdit prepare ...` first or fix data.real / data.synthetic")


def resolve_model(recipe: RecipeConfig) -> tuple[ModelConfig, int]:
    """The model config with caption width / latent channels taken from the data; caption length."""
    from microdit.data.manifest import load_manifest, set_exists

    overrides: dict[str, Any] = {}
    caption_len = recipe.caption_len
    refs = [r for r in (recipe.data.real, recipe.data.synthetic) if r]
    manifests = [load_manifest(r) for r in refs if set_exists(r)]
    if manifests:
        first = manifests[0]
        for other in manifests[1:]:
            if other.text_shape != first.text_shape:
                raise ConfigError(f"data: sets {first.name!r} and {other.name!r} use different text encoders "
                                  f"({first.text_shape} vs {other.text_shape}); prepare both with the same one")
        caption_len, caption_dim = first.text_shape
        overrides["caption_dim"] = caption_dim
        for phase in recipe.phases:
            channels, height, _ = first.latent_shape(phase.resolution)
            overrides["latent_channels"] = channels
            if phase.resolution // recipe.vae_factor != height:
                raise ConfigError(f"vae_factor={recipe.vae_factor}: set {first.name!r} has {height}x{height} latents "
                                  f"at {phase.resolution} px, so vae_factor must be {phase.resolution // height}")
    explicit = {k: v for k, v in overrides.items() if k in recipe.model and recipe.model[k] != v}
    if explicit:
        raise ConfigError(f"model: {explicit} contradicts the data (the sets give {overrides}); drop those fields")
    return recipe.architecture(**overrides), caption_len


def scaling_kwargs(resources) -> dict[str, Any]:
    """``ScalingConfig`` arguments: workers, per-worker CPUs/GPUs and, on GPUs, the accelerator type
    the price and MFU assume (Ray schedules the workers only on nodes with that GPU, so an L4 is
    never billed and scored as an H100)."""
    per_worker: dict[str, float] = {"CPU": resources.cpus_per_worker}
    kwargs: dict[str, Any] = {"num_workers": resources.num_workers, "use_gpu": resources.use_gpu,
                              "resources_per_worker": per_worker}
    if resources.use_gpu:
        per_worker["GPU"] = resources.gpus_per_worker
        if resources.request_accelerator_type:
            kwargs["accelerator_type"] = resources.accelerator
    return kwargs


def storage_path(recipe: RecipeConfig) -> str:
    """Where the recipe's Ray runs live: ``tracking.storage_path`` or ``<storage root>/runs``."""
    configured = recipe.tracking.storage_path
    return storage.resolve(configured) if configured else storage.join(storage.root(), "runs")


def with_resolved_data(recipe: RecipeConfig) -> dict[str, Any]:
    """The recipe as a dict whose set references (``data``, per-phase ``data``, the evaluation
    reference) are absolute locations, for the workers: resolved here, in the driver."""
    from microdit.data.manifest import resolve_set_path

    data = recipe.to_dict()
    sections = [data.get("data") or {}] + [phase.get("data") or {} for phase in data.get("phases", [])]
    for section in sections:
        for key in ("real", "synthetic"):
            if section.get(key):
                section[key] = resolve_set_path(section[key])
    evaluation = data.get("evaluation")
    if evaluation and evaluation.get("reference"):
        evaluation["reference"] = resolve_set_path(evaluation["reference"])
    return data


def check_resumed_recipe(uri: str, run_id: str, recipe: RecipeConfig) -> None:
    """Refuse to resume run ``run_id`` with a recipe that differs from the one it started with."""
    import json

    from mlflow.exceptions import MlflowException

    from microdit.tracking import client

    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = client(uri).download_artifacts(run_id, RECIPE_ARTIFACT, tmp)
            stored = json.loads(Path(path).read_text())
    except (MlflowException, OSError):
        log.warning("run %s has no stored %s: cannot check that the resumed recipe is unchanged", run_id,
                    RECIPE_ARTIFACT)
        return
    changed = config_changes(stored, recipe.to_dict())
    if changed:
        raise ConfigError(f"run {recipe.name!r} exists with a different recipe (changed: {describe_changes(changed)}); "
                          "resuming would mix two configurations. Use a new name, restore the old values, "
                          "or pass --allow-changed-recipe to resume anyway")


def run_training(recipe: RecipeConfig, *, run_name: str | None = None, parent_run_id: str | None = None,
                 callbacks: list | None = None, mlflow_tags: dict[str, str] | None = None,
                 allow_changed_recipe: bool = False, log_final: bool = True,
                 mlflow_params: dict[str, Any] | None = None, progress: bool = False) -> TrainSummary:
    """Fit the recipe on Ray Train and return what it cost; raises on failure (MLflow run FAILED).
    A run name that exists resumes it, but only with the recipe it started with (unless allowed).
    ``log_final=False``: the caller (a sweep trial) logs the final metrics itself, evaluation included.
    ``progress``: show step/total · phase · loss · $ · ETA in this process (``microdit train``)."""
    from microdit.exclusive import held_exclusively

    name = run_name or recipe.name
    run_dir = storage.join(storage_path(recipe), name)
    with held_exclusively("train", name, run_dir, "Wait for it to finish (relaunching it later resumes it), or "
                          "train under another name (--set name=...)."):
        return _run_training(recipe, name, run_dir, parent_run_id=parent_run_id, callbacks=callbacks,
                             mlflow_tags=mlflow_tags, allow_changed_recipe=allow_changed_recipe, log_final=log_final,
                             mlflow_params=mlflow_params, progress=progress)


def _run_training(recipe: RecipeConfig, name: str, run_dir: str, *, parent_run_id: str | None,
                  callbacks: list | None, mlflow_tags: dict[str, str] | None, allow_changed_recipe: bool,
                  log_final: bool, mlflow_params: dict[str, Any] | None, progress: bool) -> TrainSummary:
    import time

    import ray.train
    from ray.train.torch import TorchTrainer

    from microdit.console import train_logging_config
    from microdit.train.loop import train_loop_per_worker

    started = time.perf_counter()
    connect_ray()
    uri = tracking_uri(recipe.tracking.mlflow_uri)
    check_tracking_fits_cluster(uri)
    ensure_data(recipe)
    model_config, caption_len = resolve_model(recipe)
    storage_root = storage_path(recipe)
    existing = find_run(uri, recipe.tracking.experiment, name)
    if existing and not allow_changed_recipe:
        check_resumed_recipe(uri, existing, recipe)
    run_id, created = get_or_create_run(uri, recipe.tracking.experiment, name, "train", parent_run_id,
                                        {"ray.storage_path": storage_root, **(mlflow_tags or {})})
    if created:
        log_params(uri, run_id, {**flatten(recipe.to_dict()), **{f"resolved_model.{k}": v for k, v in
                                                                 model_config.to_dict().items()},
                                 **(mlflow_params or {})})
        client(uri).log_dict(run_id, recipe.to_dict(), RECIPE_ARTIFACT)
        if recipe.evaluation is not None:
            deviation = deviation_from_official(recipe.evaluation.steps, recipe.evaluation.guidance)
            client(uri).set_tag(run_id, "microdit.eval_protocol", deviation or "official: 30 Heun steps, guidance 5")
    config = {"recipe": with_resolved_data(recipe), "model_config": model_config.to_dict(), "caption_len": caption_len,
              "mlflow_uri": uri, "mlflow_run_id": run_id, "run_dir": run_dir,
              "driver_pid": os.getpid(), "driver_host": socket.gethostname()}  # debug.kill_driver_at_step only
    run_callbacks, view = list(callbacks or []), None
    if progress:
        from microdit.train.progress import TrainProgress

        view = TrainProgress(recipe, name)
        run_callbacks.append(view.callback())
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config,
        scaling_config=ray.train.ScalingConfig(**scaling_kwargs(recipe.resources)),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage_root, callbacks=run_callbacks or None,
            failure_config=ray.train.FailureConfig(max_failures=recipe.tracking.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=recipe.tracking.keep_checkpoints),
            logging_config=train_logging_config(),
        ),
    )
    try:
        result = trainer.fit()
    except BaseException as err:  # Ctrl-C / `ray job stop` too: no run left RUNNING in MLflow
        finish_run(uri, run_id, "FAILED" if isinstance(err, Exception) else "KILLED")
        raise
    finally:
        if view is not None:
            view.close()
    outcome = result.return_value or {}
    mlflow_client = client(uri)
    errors = outcome.get("logging_errors") or []
    if errors:  # rank 0's MLflow writes failed: its step metrics are missing from the run
        log.warning("run %s: %d MLflow logging error(s) on rank 0, e.g. %s", name, len(errors), errors[0])
        mlflow_client.set_tag(run_id, "microdit.logging_errors", f"{len(errors)}: {errors[0]}"[:5000])
    if outcome.get("worker_package"):
        mlflow_client.set_tag(run_id, "microdit.worker_package", outcome["worker_package"])
    if outcome.get("stop_reason") and not outcome.get("finished"):
        mlflow_client.set_tag(run_id, "microdit.stop_reason", outcome["stop_reason"])
        finish_run(uri, run_id, "FAILED")
        raise TrainingStopped(f"run {name!r} stopped: {outcome['stop_reason']}")
    with tempfile.TemporaryDirectory() as tmp:
        recipe_file = Path(tmp) / "recipe.yaml"
        recipe_file.write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False))
        mlflow_client.log_artifact(run_id, str(recipe_file))
    weights = final_weights_location(result, run_dir) if outcome.get("finished") else None
    if weights:
        mlflow_client.set_tag(run_id, WEIGHTS_TAG, weights)
    if log_final:
        final = {f"final/{key}": float(outcome[key]) for key in ("cost_usd", "gpu_hours", "images_seen", "global_step")
                 if key in outcome}
        final["final/train_usd"] = float(outcome.get("cost_usd", 0.0))
        log_final_metrics(uri, run_id, {**final, "cost_usd": final["final/train_usd"]}, int(outcome.get("global_step", 0)))
    mlflow_client.set_tag(run_id, "microdit.ray_run_path", run_dir)
    finish_run(uri, run_id, "FINISHED")
    return TrainSummary(run_name=name, mlflow_run_id=run_id, storage=run_dir,
                        global_step=int(outcome.get("global_step", 0)), images_seen=int(outcome.get("images_seen", 0)),
                        cost_usd=float(outcome.get("cost_usd", 0.0)), gpu_hours=float(outcome.get("gpu_hours", 0.0)),
                        weights=weights, wall_seconds=time.perf_counter() - started,
                        first_step_wall=outcome.get("first_step_wall"), logging_errors=errors,
                        worker_package=outcome.get("worker_package"))


def final_weights_location(result, run_dir: str) -> str | None:
    """``final_weights.pt`` inside the run's latest checkpoint, as a path or URI under ``run_dir``
    (``Result.checkpoint.path`` is relative to its filesystem: no scheme for object stores)."""
    from microdit.train.state import WEIGHTS_FILE

    checkpoint = getattr(result, "checkpoint", None)
    if checkpoint is None:
        return None
    location = storage.join(run_dir, storage.name(checkpoint.path), WEIGHTS_FILE)
    if not storage.exists(location):
        log.warning("the last checkpoint %s holds no %s", checkpoint.path, WEIGHTS_FILE)
        return None
    return location
