"""``microdit sweep SPEC [--dry-run] [--allow-changed-spec]``: run (or resume) an ablation sweep on Ray Tune + Optuna."""

from __future__ import annotations

import argparse
import sys


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("sweep", help="run or resume an ablation sweep (Ray Tune + Optuna)")
    from microdit.config.shipped import SWEEPS, shipped_names

    parser.add_argument("spec", help="sweep spec YAML path, or a shipped spec: " + ", ".join(shipped_names(SWEEPS)))
    parser.add_argument("--dry-run", action="store_true", help="print trials and predicted cost, run nothing")
    parser.add_argument("--images-per-s", type=float, default=None,
                        help="throughput for the dry-run prediction (default: assumed MFU 0.5 on GPUs, 20 img/s on CPU)")
    parser.add_argument("--storage", default=None, help="storage root of this sweep: a path or URI such as s3://bucket/microdit (default $MICRODIT_ROOT or ~/microdit)")
    parser.add_argument("--allow-changed-spec", action="store_true",
                        help="resume a sweep even though its spec changed since it started (default: refuse)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from microdit.config.sweep import load_sweep

    spec = load_sweep(args.spec)
    if args.dry_run:
        from microdit.sweep.plan import format_plan

        print(format_plan(spec, args.images_per_s))
        return 0
    from microdit.console import where_to_look
    from microdit.sweep.accounting import usd
    from microdit.sweep.runner import run_sweep
    from microdit.tracking import tracking_uri

    outcome = run_sweep(spec, storage=args.storage, allow_changed_spec=args.allow_changed_spec)
    print(outcome.report)
    print(f"\nsweep {outcome.name}: {outcome.finished} finished, {outcome.stopped_early} stopped early, "
          f"{outcome.failed} failed; spent {usd(outcome.spent_usd)}; wall {outcome.wall_seconds:.0f} s")
    for line in where_to_look(tracking_uri(spec.mlflow_uri), outcome.parent_run_id, spec.name, outcome.best_trial):
        print(line)
    if outcome.failed:
        print(f"microdit sweep: {outcome.failed} trial(s) failed (their errors are in the Tune results and the "
              "MLflow child runs); run the command again to retry them", file=sys.stderr)
        return 1
    return 0
