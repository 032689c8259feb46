"""Pareto front, the within-noise rule at its edges, table cells and the Pareto plot's content."""

from __future__ import annotations

import math

import pytest

from microdit.sweep.pareto import (
    dominates,
    error_bars,
    format_table,
    pareto_front,
    scatter_plot,
    with_error,
    within_noise,
)


def test_dominance_needs_no_worse_everywhere_and_better_somewhere():
    assert dominates((1.0, 2.0), (1.0, 3.0), ["min", "min"])
    assert not dominates((1.0, 2.0), (1.0, 2.0), ["min", "min"])  # equal: neither dominates
    assert not dominates((0.5, 4.0), (1.0, 3.0), ["min", "min"])  # better in one, worse in the other
    assert dominates((2.0, 1.0), (1.0, 1.0), ["max", "min"]) and not dominates((1.0, 1.0), (2.0, 1.0), ["max", "min"])
    assert pareto_front([(3.0, 1.0), (1.0, 3.0), (2.0, 2.0), (2.0, 3.0)], ["min", "min"]) == [0, 1, 2]
    assert pareto_front([(3.0, 1.0), (1.0, 3.0), (2.0, 2.0), (2.0, 3.0)], ["max", "max"]) == [0, 3]  # (2, 3) beats (2, 2), (1, 3)


def test_within_noise_edges():
    """|x_i - x_best| <= 2 hypot(s_i, s_best); each std counts, the bound itself is within noise."""
    assert within_noise([10.0, 12.0], [1.0, 0.0], "min") == ["best", True]  # 2 <= 2 x hypot(0, 1)
    assert within_noise([10.0, 12.0], [0.0, 1.0], "min") == ["best", True]
    assert within_noise([10.0, 12.5], [1.0, 0.0], "min") == ["best", False]
    assert within_noise([0.0, 10.0, 10.5], [3.0, 4.0, 4.0], "min") == ["best", True, False]  # 2 x 5 = 10
    assert within_noise([0.0, 10.0], [3.0, 4.0], "min", k=1.0) == ["best", False]
    # the best is the smallest (min) or largest (max), wherever it stands; the first of a tie
    assert within_noise([3.0, 1.0, 2.0, 1.0], [None] * 4, "min") == [False, "best", False, True]
    assert within_noise([3.0, 1.0, 2.0], [0.4, 0.4, 0.4], "max") == ["best", False, True]  # 1 <= 2 x 0.566
    # non-finite values are never best nor within noise; a non-finite or negative std counts as 0
    assert within_noise([math.inf, 5.0, math.nan], [1.0, 1.0, 1.0], "min") == [False, "best", False]
    assert within_noise([math.nan, math.nan], [1.0, 1.0], "max") == [False, False]
    assert within_noise([1.0, 1.5], [math.nan, -1.0], "min") == ["best", False]


def test_within_noise_refuses_bad_arguments_by_name():
    with pytest.raises(ValueError) as err:
        within_noise([1.0], [1.0], "lowest")
    assert str(err.value) == "mode: expected 'min' or 'max', got 'lowest'"
    with pytest.raises(ValueError) as err:
        within_noise([1.0, 2.0], [1.0], "min")
    assert str(err.value) == "within_noise: 2 values but 1 stds"


def test_with_error_cells():
    assert with_error(1234.5, 150.0) == "1234 ± 150"  # std >= 10: no decimals (never negative ones)
    assert with_error(5, 2) == "5.0 ± 2.0"  # std 2: one decimal, so the last digit of the std is its second
    assert with_error(1.0, 1e-12) == "1.0000000000 ± 0.0000000000"  # at most 10 decimals
    assert with_error(0.5, 0.0) == "0.5" and with_error(0.5, -1.0) == "0.5" and with_error(2.0, "x") == "2"
    assert with_error(math.nan, 1.0) == "nan" and with_error(math.inf, 1.0) == "inf"
    assert with_error(True, 1.0) == "True" and with_error("n/a") == "n/a"


def test_format_table_aligns_columns_and_writes_floats_to_4_digits():
    rows = [{"a": 1.234567, "name": "x"}, {"a": 10, "name": "longer name", "extra": 1}]
    assert format_table(rows, ["name", "a", "missing"]) == "\n".join([
        "name         a      missing",
        "-----------  -----  -------",
        "x            1.235         ",
        "longer name  10            ",
    ])
    assert format_table([], ["a", "bb"]) == "a  bb\n-  --"


def test_error_bars_prefer_std_then_intervals():
    rows = [{"fid": 10.0, "fid_std": 2.0, "fid_ci_low": 1.0, "fid_ci_high": 30.0}, {"fid": 5.0, "fid_std": None}]
    assert error_bars(rows, "fid") == ([[2.0, 0.0], [2.0, 0.0]], "±1 std")
    interval = [{"fid": 10.0, "fid_ci_low": 8.0, "fid_ci_high": 13.0},
                {"fid": 5.0, "fid_ci_low": 6.0, "fid_ci_high": 4.0},  # an interval that misses its value: no bar
                {"fid": math.nan, "fid_ci_low": 1.0, "fid_ci_high": 2.0},  # no usable value: no bar
                {"fid": 7.0, "fid_ci_low": 6.0}]  # half an interval: no bar
    assert error_bars(interval, "fid") == ([[2.0, 0.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.0]], "interval")
    assert error_bars([{"fid": 1.0, "fid_ci_low": 0.5}], "fid") is None
    assert error_bars([{"fid": 1.0, "fid_std": 0.0}], "fid") is None


def _plotted(monkeypatch, *args):
    """Call ``scatter_plot`` and keep the figure it saves (it closes it afterwards)."""
    from matplotlib.figure import Figure

    saved = []
    original = Figure.savefig

    def keep(self, *a, **k):
        saved.append(self)
        return original(self, *a, **k)

    monkeypatch.setattr(Figure, "savefig", keep)
    path = scatter_plot(*args)
    (figure,) = saved
    return path, figure.axes[0]


def test_scatter_plot_shows_every_point_labels_the_front_and_error_bars(tmp_path, monkeypatch):
    rows = [{"cost": 3.0, "fid": 300.0, "fid_std": 5.0, "model.depth": 1, "lr": 0.00123456},
            {"cost": 1.0, "fid": 317.0, "fid_std": 8.0, "model.depth": 2, "lr": 0.001},
            {"cost": 2.0, "fid": 340.0, "model.depth": 3, "lr": 0.002}]
    path, ax = _plotted(monkeypatch, rows, [0, 1], "cost", "fid", ["model.depth", "lr"], tmp_path / "p.png", "the title")
    assert path == tmp_path / "p.png" and path.read_bytes()[:4] == b"\x89PNG"
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == ("cost", "fid", "the title")
    assert ax.collections[0].get_offsets().tolist() == [[3.0, 300.0], [1.0, 317.0], [2.0, 340.0]]
    (front,) = [line for line in ax.lines if line.get_label() == "Pareto front"]  # joined in order of x
    assert (list(front.get_xdata()), list(front.get_ydata())) == ([1.0, 3.0], [317.0, 300.0])
    assert [t.get_text() for t in ax.texts] == ["depth=1, lr=0.00123", "depth=2, lr=0.001", "depth=3, lr=0.002"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["trials", "Pareto front",
                                                                   "error bars (fid: ±1 std)"]


def test_scatter_plot_without_a_front_or_error_bars(tmp_path, monkeypatch):
    rows = [{"cost": 1.0, "fid": 3.0, "m": "a"}, {"cost": 2.0, "fid": 4.0, "m": "b"}]
    _, ax = _plotted(monkeypatch, rows, [], "cost", "fid", ["m"], tmp_path / "q.png", "t")
    assert list(ax.lines) == [] and [t.get_text() for t in ax.texts] == ["m=a", "m=b"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["trials"]
    both = [{"cost": 1.0, "cost_std": 0.1, "fid": 3.0, "fid_ci_low": 2.0, "fid_ci_high": 5.0, "m": 1}]
    _, ax = _plotted(monkeypatch, both, [0], "cost", "fid", ["m"], tmp_path / "r.png", "t")
    assert [t.get_text() for t in ax.get_legend().get_texts()][-1] == "error bars (cost: ±1 std; fid: interval)"


def test_scatter_plot_draws_both_error_bars_and_layers_the_front_on_top(tmp_path, monkeypatch):
    """Error bars on x and y (±1 std here), under the grey trial points, under the red front with
    markers; the image is 7 x 5 inches at 120 dpi = 840 x 600 px. The look is pinned so that a
    change to it is a deliberate one."""
    import struct

    from matplotlib.colors import to_hex

    rows = [{"cost": 1.0, "cost_std": 0.1, "fid": 3.0, "fid_std": 0.5, "m": 1}, {"cost": 2.0, "fid": 2.0, "m": 2}]
    path, ax = _plotted(monkeypatch, rows, [0, 1], "cost", "fid", ["m"], tmp_path / "p.png", "t")
    assert struct.unpack(">II", path.read_bytes()[16:24]) == (840, 600)  # the PNG header's width, height
    (bars,) = ax.containers
    joined, caps, (x_bars, y_bars) = bars.lines
    assert (bars.has_xerr, bars.has_yerr) == (True, True) and joined is None  # bars only: no line through the trials
    assert [s.tolist() for s in x_bars.get_segments()] == [[[0.9, 3.0], [1.1, 3.0]], [[2.0, 2.0], [2.0, 2.0]]]
    assert [s.tolist() for s in y_bars.get_segments()] == [[[1.0, 2.5], [1.0, 3.5]], [[2.0, 2.0], [2.0, 2.0]]]
    assert {to_hex(b.get_color()[0]) for b in (x_bars, y_bars)} == {"#666666"}
    assert [b.get_linewidth()[0] for b in (x_bars, y_bars)] == [1, 1]
    assert {c.get_markersize() for c in caps} == {6.0}  # caps 3 points each side
    trials = ax.collections[0]
    (front,) = [line for line in ax.lines if line.get_label() == "Pareto front"]
    assert to_hex(trials.get_facecolor()[0]) == "#999999" and to_hex(front.get_color()) == "#d62728"
    assert (front.get_marker(), front.get_linestyle()) == ("o", "-")
    assert (x_bars.get_zorder(), trials.get_zorder(), front.get_zorder()) == (1, 2, 3)
    label = ax.texts[0]
    assert (label.get_fontsize(), label.xyann, label.anncoords) == (7.0, (4, 4), "offset points")
    assert ax.xaxis.get_gridlines()[0].get_alpha() == 0.3


def test_scatter_plot_error_bars_on_one_axis_only(tmp_path, monkeypatch):
    rows = [{"cost": 1.0, "cost_std": 0.25, "fid": 3.0}, {"cost": 2.0, "fid": 2.0}]
    _, ax = _plotted(monkeypatch, rows, [], "cost", "fid", [], tmp_path / "x.png", "t")
    (bars,) = ax.containers
    assert (bars.has_xerr, bars.has_yerr) == (True, False)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["trials", "error bars (cost: ±1 std)"]
    rows = [{"cost": 1.0, "fid": 3.0, "fid_std": 0.5}, {"cost": 2.0, "fid": 2.0}]
    _, ax = _plotted(monkeypatch, rows, [], "cost", "fid", [], tmp_path / "y.png", "t")
    assert (ax.containers[0].has_xerr, ax.containers[0].has_yerr) == (False, True)
