"""Pareto front of finished trials (e.g. cost vs FID), as a table and a scatter plot, with noise.

A metric ``m`` may come with ``m_std`` (FID: its resampling std, ``microdit.evaluate.uncertainty``;
or the std over seeds) and ``m_ci_low`` / ``m_ci_high``: ``with_error`` writes ``317.2 ± 8.1``,
``within_noise`` says which results cannot be told apart from the best, ``scatter_plot`` draws
error bars.
"""

from __future__ import annotations

import math
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


NOISE_K = 2.0  # |x_i - x_best| <= NOISE_K * sqrt(std_i^2 + std_best^2): "within noise"


def within_noise(values: Sequence[float], stds: Sequence[float | None], mode: str,
                 k: float = NOISE_K) -> list[bool | str]:
    """Per value: ``"best"``, True (within noise of the best) or False (worse beyond the noise).

    Rule: value i is within noise of the best b when |x_i - x_b| <= k sqrt(s_i^2 + s_b^2), k = 2:
    the difference of two independent estimates with stds s_i, s_b is within ~2 (1.96) of its
    combined std, i.e. a two-sided test at ~5 % cannot tell them apart. A missing or non-finite
    std counts as 0 (then only exact ties are within noise). The best is the first minimum
    (``mode="min"``) or maximum (``"max"``); non-finite values are never best nor within noise.
    """
    if mode not in ("min", "max"):
        raise ValueError(f"mode: expected 'min' or 'max', got {mode!r}")
    if len(values) != len(stds):
        raise ValueError(f"within_noise: {len(values)} values but {len(stds)} stds")
    finite = [i for i, v in enumerate(values) if _finite(v)]
    if not finite:
        return [False] * len(values)
    sign = 1.0 if mode == "min" else -1.0
    best = min(finite, key=lambda i: sign * values[i])
    s_best = _std(stds[best])
    flags: list[bool | str] = []
    for i, value in enumerate(values):
        if i == best:
            flags.append("best")
        else:
            flags.append(i in finite and abs(value - values[best]) <= k * math.hypot(_std(stds[i]), s_best))
    return flags


def with_error(value: Any, std: Any = None) -> str:
    """A table cell: ``317.2 ± 8.1`` (std to 2 significant digits, value to the same decimal);
    without a usable std (None, NaN, <= 0) the value as ``format_table`` writes it; None -> ''."""
    if value is None:
        return ""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not _finite(value):
        return str(value)
    if not _std(std):
        return f"{value:.4g}"
    decimals = min(10, max(0, 1 - math.floor(math.log10(std))))
    return f"{value:.{decimals}f} ± {std:.{decimals}f}"


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _std(value: Any) -> float:
    return float(value) if _finite(value) and value > 0 else 0.0


def error_bars(rows: list[dict[str, Any]], metric: str) -> tuple[list[list[float]], str] | None:
    """Matplotlib ``errorbar`` extents [[below...], [above...]] for ``metric``, and what they show.

    ``<metric>_std`` (±1 std) when any row has it, else ``<metric>_ci_low`` / ``_ci_high`` (the
    interval, possibly asymmetric); rows without one get no bar. None when no row has either.
    """
    if any(_std(r.get(f"{metric}_std")) for r in rows):
        spread = [_std(r.get(f"{metric}_std")) for r in rows]
        return [spread, spread], "±1 std"
    low, high = f"{metric}_ci_low", f"{metric}_ci_high"
    if any(_finite(r.get(low)) and _finite(r.get(high)) for r in rows):
        usable = [_finite(r.get(low)) and _finite(r.get(high)) and _finite(r.get(metric)) for r in rows]
        below = [max(0.0, r[metric] - r[low]) if ok else 0.0 for r, ok in zip(rows, usable)]
        above = [max(0.0, r[high] - r[metric]) if ok else 0.0 for r, ok in zip(rows, usable)]
        return [below, above], "interval"
    return None


def scatter_plot(rows: list[dict[str, Any]], front: list[int], x: str, y: str, labels: Sequence[str],
                 path: str | Path, title: str) -> Path:
    """All trials as points, the front highlighted and joined, each point labelled by its swept values.

    Points whose rows carry ``<x|y>_std`` (or ``_ci_low`` / ``_ci_high``) get error bars (``error_bars``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5), dpi=120)
    xs = [r[x] for r in rows]
    ys = [r[y] for r in rows]
    ax.scatter(xs, ys, color="#999999", label="trials", zorder=2)
    bars_x, bars_y = error_bars(rows, x), error_bars(rows, y)
    if bars_x or bars_y:
        shown = "; ".join(f"{m}: {bars[1]}" for m, bars in ((x, bars_x), (y, bars_y)) if bars)
        ax.errorbar(xs, ys, xerr=bars_x[0] if bars_x else None, yerr=bars_y[0] if bars_y else None, fmt="none",
                    ecolor="#666666", elinewidth=1, capsize=3, zorder=1, label=f"error bars ({shown})")
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
