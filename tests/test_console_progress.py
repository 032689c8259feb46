"""Progress views: a bar on a terminal, and off a terminal (a log file, CI) one line at most every
30 s plus a summary, never a redrawn bar per update."""

from __future__ import annotations

import io

import pytest

from microdit import console
from microdit.console import Progress


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _simulate(progress: Progress, clock: Clock, updates: int, seconds: float, total: int) -> None:
    for i in range(1, updates + 1):
        clock.now = seconds * i / updates
        progress.update(total * i // updates, phase=0, loss="0.41")
    progress.close()


@pytest.mark.parametrize("seconds, lines", [(100.0, 3 + 1), (10.0, 0 + 1), (600.0, 20 + 1)])
def test_off_a_terminal_one_line_per_30_s_and_a_summary(seconds, lines):
    out, clock = io.StringIO(), Clock()
    progress = Progress("train demo", total=1000, unit="step", stream=out, clock=clock)
    _simulate(progress, clock, updates=5000, seconds=seconds, total=1000)
    printed = out.getvalue().splitlines()
    assert len(printed) == lines, printed
    assert printed[-1].startswith("train demo: 1,000/1,000 step (100%) · phase 0 · loss 0.41 · ")
    rate = 1000 / seconds
    assert f"{rate:.3g} step/s" in printed[-1]


def test_periodic_line_has_rate_and_eta():
    out, clock = io.StringIO(), Clock()
    progress = Progress("prepare cc12m", total=10_000, unit="img", stream=out, clock=clock)
    clock.now = 40.0
    progress.update(2_000, rows=1_990)  # 50 img/s, 8,000 to go: 160 s
    assert out.getvalue().strip() == "prepare cc12m: 2,000/10,000 img (20%) · rows 1990 · 50 img/s · ETA 2m40s"


def test_silent_when_disabled_or_quiet(monkeypatch):
    out, clock = io.StringIO(), Clock()
    _simulate(Progress("x", total=10, stream=out, clock=clock, enabled=False), clock, 10, 100.0, 10)
    monkeypatch.setattr(console, "VERBOSITY", -1)
    _simulate(Progress("x", total=10, stream=out, clock=clock), clock, 10, 100.0, 10)
    assert out.getvalue() == ""


def test_a_terminal_gets_a_bar():
    out, clock = Terminal(), Clock()
    progress = Progress("evaluate", total=64, unit="img", stream=out, clock=clock)
    assert progress.bar is not None
    _simulate(progress, clock, updates=4, seconds=1.0, total=64)
    assert "64/64" in out.getvalue()


def test_resumed_run_counts_its_rate_from_the_first_update():
    out, clock = io.StringIO(), Clock()
    progress = Progress("train demo", total=1000, unit="step", stream=out, clock=clock, initial=None)
    clock.now = 20.0  # start-up; the run resumed at step 500
    progress.update(500)
    clock.now = 50.0
    progress.update(800)
    assert out.getvalue().strip() == "train demo: 800/1,000 step (80%) · 10 step/s · ETA 20s"


def test_a_sweep_prints_about_one_trial_progress_line_per_30_s(monkeypatch, capsys):
    """Two trials at a time, each reporting every second for 5 minutes: each shows progress every
    60 s, so the sweep prints about 10 progress lines, not 20 (the quickstart's line budget)."""
    from types import SimpleNamespace

    clock = Clock()
    monkeypatch.setattr(console.time, "monotonic", clock)
    lines = console.make_trial_lines(4, params=lambda config: "x", images=600, dollars=None)
    trials = [SimpleNamespace(trial_id=f"t{i}", config={}, status="RUNNING", last_result={}) for i in range(2)]
    for trial in trials:
        lines.on_trial_start(0, trials, trial)
    for second in range(1, 301):
        clock.now = float(second)
        for trial in trials:
            lines.on_trial_result(0, trials, trial, {"step": second, "images_seen": 2 * second, "loss": 0.5})
    progress = [line for line in capsys.readouterr().out.splitlines() if " · step " in line]
    assert len(progress) == 10, progress
    assert progress[0].startswith("trial 1/4 t0 · phase 0 · step 60 · loss 0.5000 · $0 · ETA ")
