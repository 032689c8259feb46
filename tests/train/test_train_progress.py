"""``microdit train``'s progress view: the driver sees rank 0's reports through the Train controller,
and off a terminal it prints a line at most every 30 s plus one summary."""

from __future__ import annotations

from train_testing import STEPS


def test_total_steps_follow_phases_and_the_image_budget():
    from microdit.config.recipe import load_recipe
    from microdit.train.progress import total_steps

    demo = load_recipe("demo")
    assert total_steps(demo) == sum(p.steps for p in demo.phases)
    first = demo.phases[0]
    cut = load_recipe("demo", {"max_images": first.steps * first.batch_size + 1})
    assert total_steps(cut) == first.steps + 1  # one more step of phase 1 crosses the budget
    dollars = load_recipe("demo", {"phases[1].steps": None, "phases[1].dollars": 1.0})
    assert total_steps(dollars) is None


def test_train_prints_a_summary_line_off_a_terminal(baseline):
    """The baseline run (``progress=True``, stdout a file): one line per 30 s at most, then the summary."""
    lines = [line for line in baseline.console.splitlines() if line.startswith("train baseline:")]
    assert 1 <= len(lines) <= 1 + baseline.summary.wall_seconds // 30, lines
    assert lines[-1].startswith(f"train baseline: {STEPS}/{STEPS} step (100%) · $"), lines
    assert "step/s" in lines[-1]
