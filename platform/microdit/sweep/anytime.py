"""The anytime view of a sweep: which configuration to choose for every budget, read from MLflow.

Every trial with milestones (``evaluation.at_dollars`` / ``at_fraction``, a ``cost_asha`` scheduler's
rungs) has a curve: its quality reading at each milestone, at what it had cost by then
(``milestone_usd``: training and every evaluation so far), and, when it finished, its final reading at
its final cost. Replicates of a configuration are averaged point by point (mean ± std over seeds; one
seed keeps the reading's half-sampling std).

For every milestone budget B (the largest cost at which any trial took its k-th reading, then the final
one), the table chooses the configuration whose latest reading within B is best: "at <= $B choose X".
Trials a scheduler stopped keep their readings (marked "stopped at $x"), so a budget below their stop
may choose them; they are never on the final Pareto front. The plot draws every configuration's curve
with a ±1 std band and the anytime front: the best reading reachable within each budget.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from microdit.sweep.accounting import usd
from microdit.sweep.pareto import format_table, with_error, within_noise


def trial_curve(mlflow_client, run_id: str, metrics: dict[str, float], status: str,
                metric: str) -> list[dict[str, float]]:
    """One trial's points [{cost_usd, value, std}] in cost order: its milestone readings (the
    ``metric`` logged at the step of a ``milestone_usd``), then its final reading if it finished."""
    def by_step(key: str) -> dict[int, float]:
        return {m.step: m.value for m in mlflow_client.get_metric_history(run_id, key)} if key in metrics else {}

    values, stds = by_step(metric), by_step(f"{metric}_std")
    points = [{"cost_usd": cost, "value": values[step], "std": stds.get(step, 0.0)}
              for step, cost in sorted(by_step("milestone_usd").items()) if step in values]
    if status == "finished" and metric in metrics and "final/cost_usd" in metrics:
        points.append({"cost_usd": metrics["final/cost_usd"], "value": metrics[metric],
                       "std": metrics.get(f"{metric}_std", 0.0), "final": 1.0})
    return sorted(points, key=lambda p: p["cost_usd"])


def configuration_curves(rows: list[dict[str, Any]], curves: dict[str, list[dict]], swept: list[str]) -> list[dict]:
    """Per configuration: its label, trials, whether any was stopped (and where) and its averaged curve:
    the k-th point is the mean over the seeds that have a k-th point (``n``: how many)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        if curves.get(row["trial"]):
            groups.setdefault(tuple(str(row.get(k)) for k in swept), []).append(row)
    configs = []
    for members in groups.values():
        trial_curves = [curves[r["trial"]] for r in members]
        points = []
        for k in range(max(len(c) for c in trial_curves)):
            at_k = [c[k] for c in trial_curves if len(c) > k]
            values = [p["value"] for p in at_k]
            std = statistics.stdev(values) if len(values) > 1 else at_k[0]["std"]
            points.append({"cost_usd": statistics.fmean(p["cost_usd"] for p in at_k),
                           "value": statistics.fmean(values), "std": std, "n": len(at_k)})
        stops = [r.get("stopped_at_usd") for r in members if r.get("status") == "stopped_early"]
        label = ", ".join(f"{k.split('.')[-1]}={members[0].get(k)}" for k in swept)
        configs.append({"label": label, "values": {k: members[0].get(k) for k in swept},
                        "trials": ",".join(r["trial"].rsplit("-", 1)[-1] for r in members),
                        "stopped_at_usd": stops[0] if stops else None, "points": points})
    return configs


def budgets(configs: list[dict]) -> list[float]:
    """The milestone budgets: for each point index k, the largest cost of a k-th point over configurations."""
    depth = max((len(c["points"]) for c in configs), default=0)
    marks = {max(c["points"][k]["cost_usd"] for c in configs if len(c["points"]) > k) for k in range(depth)}
    return sorted(marks)


def latest_within(config: dict, budget: float) -> dict | None:
    """The configuration's last point whose cost is within ``budget``."""
    inside = [p for p in config["points"] if p["cost_usd"] <= budget * (1 + 1e-12)]
    return inside[-1] if inside else None


def anytime_rows(configs: list[dict], mode: str) -> list[dict[str, Any]]:
    """One row per milestone budget: the configuration to choose, its reading, and those within noise."""
    rows = []
    for budget in budgets(configs):
        candidates = [(c, p) for c in configs if (p := latest_within(c, budget)) is not None]
        flags = within_noise([p["value"] for _, p in candidates], [p["std"] for _, p in candidates], mode)
        best = flags.index("best")
        chosen, point = candidates[best]
        close = [c["label"] for (c, _), flag in zip(candidates, flags) if flag is True]
        stopped = chosen["stopped_at_usd"]
        rows.append({"budget": budget, "choose": chosen["label"] + (f" (stopped at {usd(stopped)})" if stopped else ""),
                     "reading": with_error(point["value"], point["std"]), "at_cost": point["cost_usd"],
                     "within_noise": "; ".join(close) or "-", "_label": chosen["label"], "_value": point["value"]})
    return rows


def anytime_summary(rows: list[dict[str, Any]]) -> str:
    """'at <= $B choose X; from $C choose Y': the budgets where the choice changes."""
    parts, previous = [], None
    for i, row in enumerate(rows):
        if row["_label"] != previous:
            parts.append(f"{'at <=' if i == 0 else 'from'} {usd(row['budget'])} choose {row['choose']}")
            previous = row["_label"]
    return "; ".join(parts)


def format_anytime(rows: list[dict[str, Any]], metric: str) -> str:
    table = [{**r, "budget": f"<= {usd(r['budget'])}", "at_cost": usd(r["at_cost"])} for r in rows]
    return format_table(table, ["budget", "choose", "reading", "at_cost", "within_noise"]).replace(
        "reading", metric.ljust(len("reading")), 1)


def anytime_plot(configs: list[dict], rows: list[dict[str, Any]], metric: str, path: str | Path, title: str) -> Path:
    """Each configuration's curve with a ±1 std band (dashed and ended by an x when stopped) and the
    anytime front (the best reading within each budget, a step line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5), dpi=120)
    for config in configs:
        xs = [p["cost_usd"] for p in config["points"]]
        ys = [p["value"] for p in config["points"]]
        spread = [p["std"] for p in config["points"]]
        stopped = config["stopped_at_usd"] is not None
        (line,) = ax.plot(xs, ys, "--" if stopped else "-", marker="o", markersize=3,
                          label=config["label"] + (" (stopped)" if stopped else ""))
        ax.fill_between(xs, [y - s for y, s in zip(ys, spread)], [y + s for y, s in zip(ys, spread)],
                        color=line.get_color(), alpha=0.15, linewidth=0)
        if stopped:
            ax.plot(xs[-1:], ys[-1:], "x", color=line.get_color(), markersize=9)
    if rows:
        ax.step([r["budget"] for r in rows], [r["_value"] for r in rows], where="post", color="black",
                linewidth=2, label="anytime front (best within budget)")
    ax.set_xlabel("cost_usd (training + evaluations so far)")
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
