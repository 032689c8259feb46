"""The sweep's comparison, read from MLflow alone: trials, status counts, Pareto front, plot.

Only trials that finished their budget count as Pareto points: a trial stopped early by ASHA
reports cheap, unfinished values that would otherwise sit on the front (SPEC §8).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from microdit.config.sweep import SweepSpec
from microdit.sweep.pareto import format_table, pareto_front, scatter_plot
from microdit.tracking import KIND_TAG, RUN_NAME_TAG, client, find_run


@dataclass
class SweepReport:
    text: str
    rows: list[dict[str, Any]]
    front: list[int]
    finished: int
    stopped_early: int
    failed: int
    spent_usd: float


def mark_unfinished(uri: str, parent_run_id: str, results) -> None:
    """Child runs Tune stopped early or that errored: status + tag, never left RUNNING."""
    mlflow_client = client(uri)
    children = _children(uri, parent_run_id)
    by_trial = {r.data.tags.get("tune.trial_id"): r for r in children}
    for result in results:
        trial_id = Path(result.path).name.split("_")[1] if result.path else None
        run = next((r for t, r in by_trial.items() if t and trial_id and t == trial_id), None)
        if run is None or "budget_done" in (result.metrics or {}):
            continue
        status = "failed" if result.error else "stopped_early"
        mlflow_client.set_tag(run.info.run_id, "microdit.trial_status", status)
        if run.info.status == "RUNNING":
            mlflow_client.set_terminated(run.info.run_id, "FAILED" if result.error else "KILLED")


def _children(uri: str, parent_run_id: str):
    mlflow_client = client(uri)
    parent = mlflow_client.get_run(parent_run_id)
    return mlflow_client.search_runs([parent.info.experiment_id],
                                     filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
                                     max_results=10_000)


def build_report(uri: str, parent_run_id: str, objectives: list[tuple[str, str]], sweep_name: str,
                 log_to_parent: bool = True) -> SweepReport:
    rows = []
    swept_keys: set[str] = set()
    for run in _children(uri, parent_run_id):
        swept_keys.update(k[len("sweep."):] for k in run.data.params if k.startswith("sweep."))
        status = run.data.tags.get("microdit.trial_status") or (
            "running" if run.info.status == "RUNNING" else run.info.status.lower())
        row = {"trial": run.data.tags.get(RUN_NAME_TAG, run.info.run_name), "status": status,
               **{k[len("sweep."):]: _number(v) for k, v in run.data.params.items() if k.startswith("sweep.")},
               **run.data.metrics}
        rows.append(row)
    rows.sort(key=lambda r: r["trial"])
    finished = [r for r in rows if r["status"] == "finished" and all(m in r for m, _ in objectives)]
    points = [[r[m] for m, _ in objectives] for r in finished]
    front_local = pareto_front(points, [mode for _, mode in objectives]) if points else []
    swept = sorted(swept_keys)
    metric_cols = [m for m, _ in objectives] + [c for c in ("cost_usd", "images_seen", "eval_seconds")
                                                 if c not in [m for m, _ in objectives]]
    columns = ["trial", "status", *swept, *metric_cols]
    front_rows = [finished[i] for i in front_local]
    lines = [f"sweep {sweep_name}: {len(rows)} trials — {len(finished)} finished, "
             f"{sum(r['status'] == 'stopped_early' for r in rows)} stopped early, "
             f"{sum(r['status'] == 'failed' for r in rows)} failed; spent ${sum(r.get('cost_usd', 0) for r in rows):.4f}",
             "", "all trials:", format_table(rows, columns), "",
             f"Pareto front ({' vs '.join(f'{m} [{mode}]' for m, mode in objectives)}):",
             format_table(sorted(front_rows, key=lambda r: r[objectives[-1][0]]), columns)]
    for metric, mode in objectives:
        if finished:
            best = (min if mode == "min" else max)(finished, key=lambda r: r[metric])
            lines.append(f"best {metric} ({mode}): {best['trial']} = {best[metric]:.4g}")
    text = "\n".join(lines)
    if log_to_parent:
        mlflow_client = client(uri)
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "pareto.txt").write_text(text)
            mlflow_client.log_artifact(parent_run_id, str(Path(tmp) / "pareto.txt"))
            if len(objectives) >= 2 and finished:
                x, y = objectives[-1][0], objectives[0][0]
                front_idx = [finished.index(r) for r in front_rows]
                plot = scatter_plot(finished, front_idx, x, y, swept, Path(tmp) / "pareto.png",
                                    f"{sweep_name}: {y} vs {x}")
                mlflow_client.log_artifact(parent_run_id, str(plot))
        mlflow_client.log_metric(parent_run_id, "spent_usd", sum(r.get("cost_usd", 0) for r in rows))
        mlflow_client.log_metric(parent_run_id, "trials_finished", len(finished))
    return SweepReport(text, rows, front_local, len(finished), sum(r["status"] == "stopped_early" for r in rows),
                       sum(r["status"] == "failed" for r in rows), sum(r.get("cost_usd", 0) for r in rows))


def _number(value: str) -> Any:
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def sweep_report(spec: SweepSpec, uri: str, parent_run_id: str, results, sweep_dir: Path) -> SweepReport:
    mark_unfinished(uri, parent_run_id, results)
    return build_report(uri, parent_run_id, [(o.metric, o.mode) for o in spec.objectives], spec.name)


def compare(sweep_name: str, uri: str, experiment: str = "microdit-sweeps",
            objectives: list[tuple[str, str]] | None = None) -> SweepReport:
    """``microdit compare SWEEP``: rebuild the report from MLflow alone."""
    from microdit.errors import ConfigError

    run_id = find_run(uri, experiment, sweep_name)
    if run_id is None:
        raise ConfigError(f"no sweep named {sweep_name!r} in MLflow experiment {experiment!r} at {uri}")
    run = client(uri).get_run(run_id)
    if run.data.tags.get(KIND_TAG) != "sweep":
        raise ConfigError(f"MLflow run {sweep_name!r} is not a sweep (kind {run.data.tags.get(KIND_TAG)!r})")
    if objectives is None:
        raw = run.data.params.get("objectives", "['fid:min', 'cost_usd:min']")
        objectives = [tuple(item.split(":")) for item in eval_list(raw)]
    return build_report(uri, run_id, objectives, sweep_name, log_to_parent=True)


def eval_list(text: str) -> list[str]:
    import ast

    return list(ast.literal_eval(text))
