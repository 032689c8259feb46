"""``microdit evaluate --checkpoint PATH_OR_RUN --reference SET --num-samples N [--guidance 5 --steps 30]``.

PATH_OR_RUN is a ``final_weights.pt``, a training checkpoint directory (local paths or URIs such
as ``s3://bucket/runs/x/checkpoint_…``), or an MLflow run id / run name of a training run (the
final weights its last checkpoint holds, tag ``microdit.weights``). Metrics (``fid_<N>``,
``clip_score`` when a CLIP model is given) and a sample grid go to that run's MLflow record,
or to a new ``evaluate`` run when a path was given.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("evaluate", help="FID / CLIP score of trained weights against a reference set")
    parser.add_argument("--checkpoint", required=True, help="final_weights.pt, a checkpoint dir, or an MLflow run")
    parser.add_argument("--reference", default="demo_real_heldout", help="prepared reference set (path or name)")
    parser.add_argument("--num-samples", type=int, default=1000, help="generated images (the metric is fid_<N>)")
    parser.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance (official: 5)")
    parser.add_argument("--steps", type=int, default=30, help="Heun sampling steps (official: 30)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (sample i: a hash of seed and i)")
    parser.add_argument("--weights", choices=("auto", "ema", "live"), default="auto",
                        help="for a checkpoint folder: auto = the EMA only if the phase in progress updated it")
    parser.add_argument("--clip-model", default=None, help="CLIPModel hub id or local path (CLIP score)")
    parser.add_argument("--num-actors", type=int, default=0, help="Inception actors on Ray (0 = in-process)")
    parser.add_argument("--workers", type=int, default=0,
                        help="evaluate on N Ray Train workers, each its share of the samples (0 = in this process)")
    parser.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs per worker (0 = CPU workers)")
    parser.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs per worker")
    parser.add_argument("--accelerator", default=None,
                        help="device type: its price bills eval_cost_usd and, on GPUs, Ray schedules on it "
                             "(default CPU, or H100 with --gpus-per-worker)")
    parser.add_argument("--mlflow-uri", default=None, help="MLflow store (default: $MLFLOW_TRACKING_URI or <root>/mlflow.db)")
    parser.add_argument("--experiment", default="microdit-eval", help="MLflow experiment of new evaluate runs")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress view (default, in this process: a bar on a terminal, a line every 30 s "
                             "otherwise)")
    parser.set_defaults(func=run)


def resolve_checkpoint(ref: str, uri: str) -> tuple[str, str | None]:
    """(weights location, MLflow run id of the training run or None)."""
    from microdit import storage
    from microdit.errors import ConfigError
    from microdit.tracking import client
    from microdit.train.trainer import WEIGHTS_TAG

    if storage.is_uri(ref) or Path(ref).exists():
        location = storage.resolve(ref)
        if not storage.exists(location):
            raise ConfigError(f"--checkpoint {ref!r}: nothing at {location}")
        return location, None
    mlflow_client = client(uri)
    try:
        run = mlflow_client.get_run(ref)
    except Exception:
        from microdit.tracking import RUN_NAME_TAG

        runs = mlflow_client.search_runs(
            [e.experiment_id for e in mlflow_client.search_experiments()],
            filter_string=f"tags.`{RUN_NAME_TAG}` = '{ref}'", max_results=1)
        if not runs:
            raise ConfigError(f"--checkpoint {ref!r}: not a file, not an MLflow run id or run name at {uri}") from None
        run = runs[0]
    weights = run.data.tags.get(WEIGHTS_TAG)
    if not weights or not storage.exists(weights):
        raise ConfigError(f"--checkpoint {ref!r}: MLflow run {run.info.run_id} has no final weights "
                          f"(tag {WEIGHTS_TAG}={weights!r}); did the run finish?")
    return weights, run.info.run_id


def run(args: argparse.Namespace) -> int:
    import tempfile

    from microdit.cluster import connect_ray
    from microdit.config.recipe import deviation_from_official
    from microdit.evaluate.pipeline import EvaluationConfig, evaluate_weights
    from microdit.tracking import client, finish_run, get_or_create_run, tracking_uri

    uri = tracking_uri(args.mlflow_uri)
    weights, run_id = resolve_checkpoint(args.checkpoint, uri)
    if args.num_actors:
        connect_ray()
    config = EvaluationConfig(reference=args.reference, num_samples=args.num_samples, steps=args.steps,
                              guidance=args.guidance, seed=args.seed, clip_model=args.clip_model,
                              num_actors=args.num_actors, progress=not (args.no_progress or args.workers))
    with tempfile.TemporaryDirectory() as tmp:
        grid = Path(tmp) / "evaluation_samples.png"
        if args.workers:
            metrics = evaluate_on_ray_workers(args, weights, config)
        else:
            metrics = evaluate_weights(weights, config, grid_path=grid, which=args.weights)
        created = run_id is None
        if created:
            run_id, _ = get_or_create_run(uri, args.experiment, f"eval-{_run_label(weights)}-{args.num_samples}",
                                          "evaluate", tags={"microdit.weights": str(weights)})
        mlflow_client = client(uri)
        for key, value in metrics.items():
            mlflow_client.log_metric(run_id, key, float(value))
        deviation = deviation_from_official(args.steps, args.guidance)
        mlflow_client.set_tag(run_id, "microdit.eval_protocol", deviation or "official: 30 Heun steps, guidance 5")
        if "clip_score" not in metrics:
            mlflow_client.set_tag(run_id, "microdit.clip_score", "unavailable (no --clip-model)")
        if grid.is_file():
            mlflow_client.log_artifact(run_id, str(grid), "evaluation")
        if created:
            finish_run(uri, run_id)
    print(" ".join(f"{k}={v:.4g}" for k, v in metrics.items()) + f"  (MLflow run {run_id})")
    if deviation:
        print(f"note: sampled with {deviation}")
    return 0


def evaluate_on_ray_workers(args: argparse.Namespace, weights: str, config) -> dict:
    """``--workers N``: a Train run of N workers (GPUs if asked) evaluates, each its share; the metrics
    add what holding those devices cost (``eval_cost_usd``, ``eval_device_hours``)."""
    import time

    from microdit import storage
    from microdit.cluster import connect_ray
    from microdit.config.recipe import ResourcesConfig
    from microdit.errors import ConfigError
    from microdit.evaluate.on_workers import evaluate_on_workers

    if config.num_actors:
        raise ConfigError("--workers and --num-actors: choose one (workers extract their own features)")
    accelerator = args.accelerator or ("H100" if args.gpus_per_worker > 0 else "CPU")
    resources = ResourcesConfig(num_workers=args.workers, use_gpu=args.gpus_per_worker > 0,
                                gpus_per_worker=args.gpus_per_worker or 1.0, cpus_per_worker=args.cpus_per_worker,
                                accelerator=accelerator)
    connect_ray()
    name = f"eval-{_run_label(weights)}-{args.num_samples}-{time.strftime('%Y%m%d-%H%M%S')}"
    metrics = evaluate_on_workers(weights, config, resources, storage_path=storage.join(storage.root(), "evaluations"),
                                  name=name, which=args.weights)
    hours = metrics["eval_seconds"] / 3600 * resources.billed_devices
    metrics.update({"eval_device_hours": hours, "eval_cost_usd": hours * resources.hourly_price})
    return metrics


def _run_label(weights: str) -> str:
    """The training run's name from a weights location (``…/<run>/checkpoint_…/final_weights.pt``)."""
    from microdit import storage

    folder = storage.parent(weights) if weights.endswith(".pt") else weights
    return storage.name(storage.parent(folder)) or "weights"
