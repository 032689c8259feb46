"""``microdit train``'s progress view: the driver sees rank 0's reports through the Train controller,
and off a terminal it prints a line at most every 30 s plus one summary."""

from __future__ import annotations

from train_testing import BATCH, STEPS, tiny_recipe


def test_total_steps_follow_phases_and_the_image_budget(tmp_path):
    from microdit.config.recipe import load_recipe
    from microdit.train.progress import total_steps

    demo = load_recipe("demo")
    assert total_steps(demo) == sum(p.steps for p in demo.phases)
    first = demo.phases[0]
    cut = load_recipe("demo", {"max_images": first.steps * first.batch_size + 1})
    assert total_steps(cut) == first.steps + 1  # one more step of phase 1 crosses the budget
    dollars = load_recipe("demo", {"phases[1].steps": None, "phases[1].dollars": 1.0})
    assert total_steps(dollars) is None


def test_train_prints_a_summary_line_off_a_terminal(train_demo, tmp_path, capsys):
    from microdit.train.trainer import run_training

    recipe = tiny_recipe(train_demo, tmp_path, "progress", {"tracking.log_every_steps": 1})
    summary = run_training(recipe, progress=True)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("train progress:")]
    assert 1 <= len(lines) <= 1 + summary.wall_seconds // 30, lines
    assert lines[-1].startswith(f"train progress: {STEPS}/{STEPS} step (100%) · "), lines
    assert " · $" in lines[-1] and "step/s" in lines[-1]
    assert summary.images_seen == STEPS * BATCH
