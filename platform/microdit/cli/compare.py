"""``microdit compare SWEEP``: the sweep's Pareto table and plot, rebuilt from MLflow alone."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("compare", help="Pareto table of a sweep, read from MLflow")
    parser.add_argument("sweep", help="the sweep's name (its spec's `name`)")
    parser.add_argument("--mlflow-uri", default=None, help="default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db")
    parser.add_argument("--experiment", default="microdit-sweeps", help="MLflow experiment of the sweep")
    parser.add_argument("--write", action="store_true",
                        help="also log the table and plot to the sweep's MLflow run (default: read-only)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from microdit.sweep.report import compare
    from microdit.tracking import tracking_uri

    print(compare(args.sweep, tracking_uri(args.mlflow_uri), args.experiment, write=args.write).text)
    return 0
