"""Pareto front of finished trials (e.g. cost vs FID), as a table and a scatter plot."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def dominates(a: Sequence[float], b: Sequence[float], modes: Sequence[str]) -> bool:
    """a dominates b: no worse in every objective and strictly better in one."""
    sign = [1.0 if m == "min" else -1.0 for m in modes]
    no_worse = all(s * x <= s * y for x, y, s in zip(a, b, sign))
    better = any(s * x < s * y for x, y, s in zip(a, b, sign))
    return no_worse and better


def pareto_front(points: Sequence[Sequence[float]], modes: Sequence[str]) -> list[int]:
    """Indices of the non-dominated points (duplicates all kept), in input order."""
    return [i for i, p in enumerate(points)
            if not any(dominates(q, p, modes) for j, q in enumerate(points) if j != i)]


def format_table(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    """A plain aligned text table."""
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    widths = [max(len(c), *(len(cell(r.get(c, ""))) for r in rows)) if rows else len(c) for c in columns]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)),
             "  ".join("-" * w for w in widths)]
    for row in rows:
        lines.append("  ".join(cell(row.get(c, "")).ljust(w) for c, w in zip(columns, widths)))
    return "\n".join(lines)


def scatter_plot(rows: list[dict[str, Any]], front: list[int], x: str, y: str, labels: Sequence[str],
                 path: str | Path, title: str) -> Path:
    """All trials as points, the front highlighted and joined, each point labelled by its swept values."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5), dpi=120)
    xs = [r[x] for r in rows]
    ys = [r[y] for r in rows]
    ax.scatter(xs, ys, color="#999999", label="trials", zorder=2)
    if front:
        ordered = sorted(front, key=lambda i: xs[i])
        ax.plot([xs[i] for i in ordered], [ys[i] for i in ordered], "o-", color="#d62728", label="Pareto front",
                zorder=3)
    for i, row in enumerate(rows):
        text = ", ".join(f"{k.split('.')[-1]}={_short(row.get(k))}" for k in labels)
        ax.annotate(text, (xs[i], ys[i]), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
