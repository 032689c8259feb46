"""The sweep's comparison, read from MLflow alone: trials, status counts, Pareto front, plot.

Only trials that finished their budget count as Pareto points: a trial stopped early by ASHA
reports cheap, unfinished values that would otherwise sit on the front (SPEC §8). Replicates of a
configuration (spec ``seeds``) are averaged; the front is taken over configurations, and the
configurations whose quality is within noise of the best are flagged. Costs are each trial's
``final/cost_usd`` (training + evaluation); the total adds the sweep's shared overhead.
"""

from __future__ import annotations

import re
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from microdit.config.sweep import SweepSpec
from microdit.sweep.accounting import sweep_total, trial_cost, usd
from microdit.sweep.anytime import (
    anytime_plot,
    anytime_rows,
    anytime_summary,
    configuration_curves,
    format_anytime,
    trial_curve,
)
from microdit.sweep.pareto import format_table, pareto_front, scatter_plot, with_error, within_noise
from microdit.tracking import KIND_TAG, RUN_NAME_TAG, child_runs, client, find_run, spec_key


@dataclass
class SweepReport:
    text: str
    rows: list[dict[str, Any]]  # one per trial
    configs: list[dict[str, Any]]  # one per configuration (replicates averaged)
    front: list[int]  # indices into ``configs``
    finished: int
    stopped_early: int
    failed: int
    spent_usd: float  # trials + overhead
    overhead_usd: float


def tune_trial_id(result) -> str | None:
    """The Tune trial id of a ``ray.tune.Result``: from its metrics, else from its directory name
    (``run_trial_<id>_<index>_<params>_<date>``; the function name itself contains ``_``)."""
    trial_id = (result.metrics or {}).get("trial_id")
    if trial_id:
        return str(trial_id)
    match = re.search(r"_([0-9a-f]{5,})_\d{5}", Path(result.path).name) if result.path else None
    return match.group(1) if match else None


def mark_unfinished(uri: str, parent_run_id: str, results) -> None:
    """Child runs Tune stopped early or that errored: status tag + terminated, never left RUNNING.
    Trials are matched to their MLflow runs by the ``tune.trial_id`` tag."""
    mlflow_client = client(uri)
    by_trial = {r.data.tags.get("tune.trial_id"): r for r in child_runs(uri, parent_run_id)}
    for result in results:
        run = by_trial.get(tune_trial_id(result))
        if run is None or (not result.error and "budget_done" in (result.metrics or {})):
            continue
        status = "failed" if result.error else "stopped_early"
        mlflow_client.set_tag(run.info.run_id, "microdit.trial_status", status)
        # a trial a scheduler stopped did not fail, whatever its killed workers left on the run
        if run.info.status == "RUNNING" or (status == "stopped_early" and run.info.status == "FAILED"):
            mlflow_client.set_terminated(run.info.run_id, "FAILED" if result.error else "KILLED")


def trial_rows(children, mlflow_client=None) -> tuple[list[dict[str, Any]], list[str]]:
    """One row per child run (status, swept values, replicate, restarts, final metrics) and the swept keys.

    ``restarts``: how often the trial started again after a failure. Tune reruns of a trial whose
    process was lost count on its run (``microdit.trial_attempts``); Train's own restarts of a failed
    worker group, and reruns that found a checkpoint, each log ``resumed_from_step`` (read with
    ``mlflow_client``), so the larger count covers both without counting one restart twice."""
    rows, swept_keys = [], set()
    for run in children:
        params = {spec_key(k[len("sweep."):]): _number(v) for k, v in run.data.params.items()
                  if k.startswith("sweep.")}
        swept_keys.update(k for k in params if k != "replicate")
        status = run.data.tags.get("microdit.trial_status") or (
            "running" if run.info.status == "RUNNING" else run.info.status.lower())
        reruns = int(run.data.tags.get("microdit.trial_attempts", "1")) - 1
        resumes = len(mlflow_client.get_metric_history(run.info.run_id, "resumed_from_step")) \
            if mlflow_client is not None and "resumed_from_step" in run.data.metrics else 0
        row = {"trial": run.data.tags.get(RUN_NAME_TAG, run.info.run_name), "status": status,
               "replicate": 0, "restarts": max(reruns, resumes), **params, **run.data.metrics,
               "run_id": run.info.run_id}
        if "microdit.stop_reason" in run.data.tags:
            row["stop_reason"] = run.data.tags["microdit.stop_reason"]
        row["cost_usd"] = trial_cost(row)
        rows.append(row)
    rows.sort(key=lambda r: r["trial"])
    return rows, sorted(swept_keys)


def configurations(finished: list[dict[str, Any]], swept: list[str], metrics: list[str]) -> list[dict[str, Any]]:
    """Replicates of one configuration averaged: ``<m>`` = mean, ``<m>_std`` = std over seeds (ddof 1);
    with a single seed a metric keeps its own ``<m>_std`` (FID: the bootstrap std) if it has one."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in finished:
        groups.setdefault(tuple(str(row.get(k)) for k in swept), []).append(row)
    configs = []
    for rows in groups.values():
        config = {k: rows[0].get(k) for k in swept}
        config["n"] = len(rows)
        config["trials"] = ",".join(r["trial"].rsplit("-", 1)[-1] for r in rows)
        for metric in metrics:
            values = [r[metric] for r in rows if metric in r]
            if not values:
                continue
            config[metric] = statistics.fmean(values)
            if len(values) > 1:
                config[f"{metric}_std"] = statistics.stdev(values)
            elif f"{metric}_std" in rows[0]:
                config[f"{metric}_std"] = rows[0][f"{metric}_std"]
        configs.append(config)
    return configs


def build_report(uri: str, parent_run_id: str, objectives: list[tuple[str, str]], sweep_name: str,
                 log_to_parent: bool = False) -> SweepReport:
    """The sweep's tables from MLflow alone; ``log_to_parent`` also writes them to the parent run."""
    mlflow_client = client(uri)
    rows, swept = trial_rows(child_runs(uri, parent_run_id), mlflow_client)
    overhead = float(mlflow_client.get_run(parent_run_id).data.metrics.get("overhead_usd", 0.0))
    names = [m for m, _ in objectives]
    finished = [r for r in rows if r["status"] == "finished" and all(m in r for m in names)]
    configs = configurations(finished, swept, [*names, *(c for c in ("cost_usd", "images_seen") if c not in names)])
    points = [[c[m] for m in names] for c in configs]
    front = pareto_front(points, [mode for _, mode in objectives]) if points else []
    quality, quality_mode = objectives[0]
    noise = within_noise([c[quality] for c in configs], [c.get(f"{quality}_std") for c in configs], quality_mode) \
        if configs else []
    for config, flag in zip(configs, noise):
        config["vs_best"] = "best" if flag == "best" else ("within noise" if flag else "worse")
    metric_cols = [*names, *(c for c in ("cost_usd", "images_seen") if c not in names)]
    config_table = [{**c, **{m: with_error(c.get(m), c.get(f"{m}_std")) for m in metric_cols}} for c in configs]
    config_cols = [*swept, "n", *metric_cols, "vs_best", "trials"]
    counts = {status: sum(r["status"] == status for r in rows) for status in ("stopped_early", "failed")}
    restarted = sum(r["restarts"] > 0 for r in rows)  # trials that started again after a failure
    spent = sweep_total(rows, overhead)
    trial_cols = ["trial", "status", *(["restarts"] if restarted else []), *swept,
                  *(["replicate"] if any(r["replicate"] for r in rows) else []),
                  *names, *(f"{m}_std" for m in names if any(f"{m}_std" in r for r in rows)),
                  *(c for c in ("cost_usd", "final/train_usd", "final/eval_usd", "images_seen") if c not in names)]
    lost = f" ({restarted} restarted after a failure, from their last checkpoint)" if restarted else ""
    lines = [f"sweep {sweep_name}: {len(rows)} trials — {len(finished)} finished, {counts['stopped_early']} stopped "
             f"early, {counts['failed']} failed{lost}; spent {usd(spent)} = trials {usd(spent - overhead)} + shared "
             f"overhead {usd(overhead)} (data, FID reference statistics)",
             "", "configurations (mean ± std over seeds; one seed: FID ± its half-sampling std):",
             format_table(config_table, config_cols), "",
             f"Pareto front ({' vs '.join(f'{m} [{mode}]' for m, mode in objectives)}):",
             format_table(sorted((config_table[i] for i in front), key=lambda r: configs[config_table.index(r)][names[-1]]),
                          config_cols), "", "all trials:", format_table(rows, trial_cols)]
    for metric, mode in objectives:
        if configs:
            best = (min if mode == "min" else max)(configs, key=lambda c: c[metric])
            lines.append(f"best {metric} ({mode}): {', '.join(f'{k}={best[k]}' for k in swept)} = "
                         f"{with_error(best[metric], best.get(f'{metric}_std'))}")
    close = [c for c in configs if c["vs_best"] == "within noise"]
    if close:
        lines.append(f"within noise of the best {quality} (|difference| <= 2 x combined std): "
                     + "; ".join(", ".join(f"{k}={c[k]}" for k in swept) for c in close))
    anytime = anytime_section(mlflow_client, rows, swept, objectives[0], parent_run_id)
    replication = replication_notes(mlflow_client, parent_run_id, configs)
    if replication:
        lines += ["", "seeds per configuration (seeds: auto):", format_table(replication, [*swept, "n", "why"])]
    lines += anytime.lines if anytime else []
    text = "\n".join(lines)
    if log_to_parent:
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "pareto.txt").write_text(text)
            mlflow_client.log_artifact(parent_run_id, str(Path(tmp) / "pareto.txt"))
            # the trials as an MLflow table (the UI's artifact view shows it as one, sortable)
            columns = sorted({k for r in rows for k in r})
            mlflow_client.log_table(parent_run_id, {c: [_cell(r.get(c)) for r in rows] for c in columns},
                                    TABLE_ARTIFACT)
            if len(objectives) >= 2 and configs:
                x, y = objectives[-1][0], objectives[0][0]
                plot = scatter_plot(configs, front, x, y, swept, Path(tmp) / "pareto.png", f"{sweep_name}: {y} vs {x}")
                mlflow_client.log_artifact(parent_run_id, str(plot))
            if anytime:
                mlflow_client.log_artifact(parent_run_id, str(anytime_plot(
                    anytime.configs, anytime.rows, quality, Path(tmp) / "anytime.png",
                    f"{sweep_name}: {quality} vs cost, anytime")))
                mlflow_client.log_table(parent_run_id, {c: [_cell(r.get(c)) for r in anytime.rows]
                                                        for c in ("budget", "choose", "reading", "at_cost",
                                                                  "within_noise")}, ANYTIME_ARTIFACT)
        mlflow_client.log_metric(parent_run_id, "spent_usd", spent)
        mlflow_client.log_metric(parent_run_id, "trials_finished", len(finished))
    return SweepReport(text, rows, configs, front, len(finished), counts["stopped_early"], counts["failed"], spent,
                       overhead)


TABLE_ARTIFACT = "sweep_trials.json"
ANYTIME_ARTIFACT = "anytime.json"


@dataclass
class Anytime:
    configs: list[dict[str, Any]]
    rows: list[dict[str, Any]]
    lines: list[str]


def anytime_section(mlflow_client, rows: list[dict[str, Any]], swept: list[str], quality: tuple[str, str],
                    parent_run_id: str) -> Anytime | None:
    """The anytime table, its summary, the scheduler's stops and what they saved (``sweep.anytime``);
    None when no trial has milestone readings."""
    metric, mode = quality
    curves = {r["trial"]: trial_curve(mlflow_client, r["run_id"], r, r["status"], metric)
              for r in rows if "milestone_usd" in r}
    configs = configuration_curves(rows, curves, swept)
    if not configs:
        return None
    table = anytime_rows(configs, mode)
    lines = ["", f"anytime: the configuration to choose within each budget ({metric} [{mode}] of its latest "
             "reading within the budget; stopped trials keep their readings):", format_anytime(table, metric),
             "choose: " + anytime_summary(table)]
    stopped = [r for r in rows if r["status"] == "stopped_early"]
    finished = [r for r in rows if r["status"] == "finished"]
    if stopped:
        lines.append(f"stopped early ({len(stopped)}): " + "; ".join(
            f"{r['trial']} at {usd(r.get('stopped_at_usd', 0.0))}: {r.get('stop_reason', 'stopped by the scheduler')}"
            for r in stopped))
        if finished:
            full = statistics.fmean(trial_cost(r) for r in finished)
            spent = sum(trial_cost(r) for r in stopped)
            lines.append(f"stopping saved about {usd(len(stopped) * full - spent)}: the stopped trials cost {usd(spent)}, "
                         f"{usd(len(stopped) * full)} had they run to the end at the finished trials' mean "
                         f"{usd(full)} (an estimate)")
    return Anytime(configs, table, lines)


def replication_notes(mlflow_client, parent_run_id: str, configs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per configuration of a ``seeds: auto`` sweep: its seeds and why (``replication.json`` on the run)."""
    import json

    from microdit.sweep.replication import REPLICATION_ARTIFACT

    if REPLICATION_ARTIFACT not in {a.path for a in mlflow_client.list_artifacts(parent_run_id)}:
        return []
    with tempfile.TemporaryDirectory() as tmp:
        decisions = json.loads(Path(mlflow_client.download_artifacts(parent_run_id, REPLICATION_ARTIFACT, tmp))
                               .read_text())
    notes = []
    for config in configs:
        mine = set(config["trials"].split(","))
        for decision in decisions:
            if mine & {t.rsplit("-", 1)[-1] for t in decision["trials"]}:
                why = decision["why"]
                if config["n"] < decision["seeds_requested"]:
                    why += f"; seed {config['n'] + 1} not run (the sweep's max_trials or dollar budget)"
                notes.append({**config, "why": why})
                config["seeds_why"] = why
    return notes


def _cell(value: Any) -> Any:
    """A table cell MLflow can store: numbers and strings as they are, anything else as text."""
    return value if isinstance(value, (int, float, str)) or value is None else str(value)


def _number(value: str) -> Any:
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def sweep_report(spec: SweepSpec, uri: str, parent_run_id: str, results, sweep_dir: str) -> SweepReport:
    mark_unfinished(uri, parent_run_id, results)
    return build_report(uri, parent_run_id, [(o.metric, o.mode) for o in spec.objectives], spec.name,
                        log_to_parent=True)


def compare(sweep_name: str, uri: str, experiment: str = "microdit-sweeps",
            objectives: list[tuple[str, str]] | None = None, write: bool = False) -> SweepReport:
    """``microdit compare SWEEP``: rebuild the report from MLflow alone (read-only unless ``write``)."""
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
    return build_report(uri, run_id, objectives, sweep_name, log_to_parent=write)


def eval_list(text: str) -> list[str]:
    import ast

    return list(ast.literal_eval(text))
