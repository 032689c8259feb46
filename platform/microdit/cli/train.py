"""``microdit train RECIPE [--set key=value ...] [--dry-run [--assume-mfu X | --images-per-s N]]``."""

from __future__ import annotations

import argparse
import sys

import yaml


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("train", help="train a recipe on Ray Train (TorchTrainer), logged to MLflow")
    from microdit.config.shipped import RECIPES, shipped_names

    parser.add_argument("recipe", help="recipe YAML path, or a shipped recipe: " + ", ".join(shipped_names(RECIPES)))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe key by dotted path, e.g. phases[0].mask_ratio=0.5")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved recipe and predicted cost")
    parser.add_argument("--assume-mfu", type=float, default=None, help="MFU for the cost prediction (GPU)")
    parser.add_argument("--images-per-s", type=float, default=None, help="measured throughput for the prediction")
    parser.add_argument("--allow-changed-recipe", action="store_true",
                        help="resume a run whose stored recipe differs from this one (refused by default)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress view (default: a bar on a terminal, a line every 30 s otherwise)")
    parser.set_defaults(func=run)


def protocol_notes(recipe) -> list[str]:
    """Where the recipe's sampling protocol deviates from the official monitoring (30 steps, guidance 5)."""
    from microdit.config.recipe import deviation_from_official

    notes = []
    if recipe.evaluation is not None:
        deviation = deviation_from_official(recipe.evaluation.steps, recipe.evaluation.guidance)
        if deviation:
            notes.append(f"evaluation uses {deviation}: its FIDs compare only with FIDs of the same protocol")
    deviation = deviation_from_official(recipe.tracking.sample_steps, recipe.tracking.sample_guidance)
    if recipe.tracking.sample_grid and deviation:
        notes.append(f"sample grids use {deviation}")
    return notes


def dry_run(recipe, assume_mfu: float | None, images_per_s: float | None) -> None:
    from microdit.model.sizes import parameter_counts
    from microdit.train.predict import format_prediction, predict

    try:
        from microdit.train.trainer import resolve_model

        model, caption_len = resolve_model(recipe)
    except Exception:  # data not prepared yet: use the size's own caption width
        model, caption_len = recipe.architecture(), recipe.caption_len
    if assume_mfu is None and images_per_s is None:
        assume_mfu = 0.5 if recipe.resources.peak_flops else None
        images_per_s = None if assume_mfu else 10.0
        basis = f"assumed MFU {assume_mfu}" if assume_mfu else "assumed 10 images/s (no GPU peak)"
    else:
        basis = f"MFU {assume_mfu}" if assume_mfu is not None else f"{images_per_s} images/s"
    # The answer first: what the run costs; then what it is (parameters, notes, the resolved recipe).
    print(f"predicted cost at {basis}, {recipe.resources.billed_devices} x {recipe.resources.accelerator} "
          f"at ${recipe.resources.hourly_price}/h per device:")
    print(format_prediction(predict(recipe, model, caption_len, assume_mfu=assume_mfu, images_per_s=images_per_s)))
    if recipe.resources.use_gpu:
        from microdit.train.predict import format_memory

        print("predicted peak GPU memory per worker (microdit.model.memory):")
        print(format_memory(recipe, model))
    counts = parameter_counts(model)
    print(f"parameters: {counts['total']:,} total, {counts['active']:,} active per token")
    for line in protocol_notes(recipe):
        print(f"note: {line}")
    print()
    print(yaml.safe_dump({"recipe": recipe.to_dict(), "resolved_model": model.to_dict(),
                          "locations": locations(recipe)}, sort_keys=False).rstrip())


def locations(recipe) -> dict[str, str]:
    """Where this run reads and writes, as resolved in the driver (paths or URIs)."""
    from microdit import storage
    from microdit.data.manifest import resolve_set_path
    from microdit.tracking import tracking_uri
    from microdit.train.trainer import storage_path

    where = {"storage_root": storage.root(), "run": storage.join(storage_path(recipe), recipe.name),
             "mlflow": tracking_uri(recipe.tracking.mlflow_uri)}
    for key in ("real", "synthetic"):
        ref = getattr(recipe.data, key)
        if ref:
            where[f"data.{key}"] = resolve_set_path(ref)
    return where


def run(args: argparse.Namespace) -> int:
    from microdit.config.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    if args.dry_run:
        dry_run(recipe, args.assume_mfu, args.images_per_s)
        return 0
    from microdit.train.trainer import run_training

    summary = run_training(recipe, allow_changed_recipe=args.allow_changed_recipe, progress=not args.no_progress)
    print(f"run {summary.run_name}: {summary.global_step} steps, {summary.images_seen:,} images, "
          f"${summary.cost_usd:.4f} ({summary.gpu_hours:.4f} device-hours), {summary.wall_seconds:.0f} s wall; "
          f"MLflow run {summary.mlflow_run_id}; weights {summary.weights}")
    if summary.logging_errors:
        print(f"microdit train: warning: {len(summary.logging_errors)} MLflow write(s) from rank 0 failed, so some step "
              f"metrics are missing from the run: {summary.logging_errors[0]}", file=sys.stderr)
    return 0
