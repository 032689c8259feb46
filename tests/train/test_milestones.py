"""Evaluation milestones (``train.milestones``, ``RecipeConfig.milestones``): where a run takes its
anytime readings, which are due, and what a reading reports."""

from __future__ import annotations

import pytest

from microdit.config.recipe import load_recipe
from microdit.errors import ConfigError
from microdit.train.milestones import (
    MILESTONE_USD,
    TARGET_IMAGES,
    TARGET_USD,
    due_milestones,
    milestone_position,
    milestone_readings,
)


def test_milestones_from_dollars_and_fractions_of_either_budget():
    dollars = load_recipe("demo", {"max_dollars": 2.0, "evaluation.at_dollars": [1.5, 0.5],
                                   "evaluation.at_fraction": [0.25, 0.75]})
    assert dollars.milestones() == [("dollars", 0.5), ("dollars", 1.5)]  # 0.25 x 2 = 0.5, 0.75 x 2 = 1.5
    images = load_recipe("demo", {"max_images": 1000, "evaluation.at_fraction": [0.333], "evaluation.at_dollars": [1.0]})
    assert images.milestones() == [("dollars", 1.0), ("images", 333.0)]
    assert load_recipe("demo").milestones() == []


def test_fractions_need_a_run_budget():
    with pytest.raises(ConfigError, match=r"evaluation.at_fraction.*need max_dollars or max_images"):
        load_recipe("demo", {"evaluation.at_fraction": [0.5]})
    with pytest.raises(ConfigError, match=r"evaluation.at_fraction"):
        load_recipe("demo", {"max_images": 10, "evaluation.at_fraction": [1.0]})  # a fraction is below 1


def test_due_milestones_by_spend_or_images_and_never_twice():
    milestones = [("dollars", 0.5), ("dollars", 1.0), ("images", 300.0)]
    assert due_milestones(milestones, [], 0.49, 299) == []
    assert due_milestones(milestones, [], 0.5, 299) == [0]
    assert due_milestones(milestones, [0], 1.2, 300) == [1, 2]  # one step can pass two
    assert due_milestones(milestones, [0, 1, 2], 9.0, 9000) == []


def test_one_reading_per_milestone_passed_with_its_target_and_spend():
    milestones = [("dollars", 0.5), ("images", 300.0)]
    readings = milestone_readings(milestones, [0, 1], {"fid_8": 120.0, "fid_8_std": 3.0}, 0.61, 320, 0.002)
    assert [r["milestone"] for r in readings] == [0.0, 1.0]
    assert readings[0][TARGET_USD] == 0.5 and TARGET_IMAGES not in readings[0]
    assert readings[1][TARGET_IMAGES] == 300.0 and TARGET_USD not in readings[1]
    assert all(r[MILESTONE_USD] == r["cost_usd"] == 0.61 and r["fid_8"] == 120.0 for r in readings)
    assert milestone_position(readings[0]) == {MILESTONE_USD: 0.61, "milestone_images": 320.0, TARGET_USD: 0.5}
