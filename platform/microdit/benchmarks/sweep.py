"""Per-trial overhead of a sweep: Tune + TorchTrainer start-up until the first optimizer step.

``python jobs/benchmark.py sweep [--trials 2 --workers 1]`` runs a grid sweep of tiny one-step
trials on the tiny demo sets (no FID: cost is the only objective) and prints, per trial, the
seconds from the trial function's start to rank 0's first finished step, the trial's whole wall
time, and the sweep's wall time per trial. Everything runs on a fresh local Ray cluster.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmark sweep", description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1, help="Train workers per trial")
    args = parser.parse_args(argv)

    from microdit.cluster import connect_ray
    from microdit.config.sweep import load_sweep
    from microdit.data.demo import ensure_demo_sets
    from microdit.sweep.report import build_report
    from microdit.sweep.runner import run_sweep
    from microdit.tracking import find_run

    connect_ray()
    tmp = Path(tempfile.mkdtemp(prefix="microdit-bench-sweep-"))
    demo = ensure_demo_sets(tmp / "data", resolution=32, size="tiny")
    spec = load_sweep({
        "name": "bench", "base": "demo",
        "overrides": {
            "model.size": "MicroDiT_Nano_4", "data.real": str(demo["demo_real"]),
            "data.synthetic": str(demo["demo_synthetic"]), "data.shuffle_buffer": 16,
            "phases": [{"name": "one", "resolution": 32, "steps": 1, "batch_size": 8 * args.workers}],
            "resources.num_workers": args.workers, "tracking.sample_grid": False,
        },
        "space": {"seed": {"grid": list(range(args.trials))}},
        "objectives": [{"metric": "cost_usd", "mode": "min"}],
        "trial_budget": {"images": 8 * args.workers},
        "budget": {"max_trials": args.trials, "max_concurrent": 1},
        "search": {"algorithm": "grid"},
        "mlflow_uri": f"sqlite:///{tmp / 'mlflow.db'}", "storage_path": str(tmp / "runs"),
    })
    started = time.perf_counter()
    run_sweep(spec)
    wall = time.perf_counter() - started
    report = build_report(spec.mlflow_uri, find_run(spec.mlflow_uri, spec.experiment, "bench"),
                          [("cost_usd", "min")], "bench", log_to_parent=False)
    print(f"{'trial':<24}{'startup to first step (s)':>28}{'trial train wall (s)':>22}")
    for row in report.rows:
        print(f"{row['trial']:<24}{row.get('startup_seconds', float('nan')):>28.1f}"
              f"{row.get('train_seconds', float('nan')):>22.1f}")
    startups = [r["startup_seconds"] for r in report.rows if "startup_seconds" in r]
    print(f"sweep wall {wall:.1f} s for {args.trials} one-step trials ({wall / args.trials:.1f} s per trial); "
          f"mean start-up to first step {sum(startups) / max(len(startups), 1):.1f} s "
          f"({args.workers} worker(s) per trial, this machine)")
    return 0
