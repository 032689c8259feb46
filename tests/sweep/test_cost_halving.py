"""``cost_asha`` (``microdit.sweep.halving``): the rung rule, and the scheduler driving real Tune trials
(fake trainables, no Ray Train) whose FID curves are known, so every stop is known in advance."""

from __future__ import annotations

import pytest

from microdit.sweep.halving import CostHalving, Reading, rung_cut, worse_beyond_noise
from microdit.train.milestones import TARGET_USD

RUNGS = [1.0, 2.0, 4.0]  # dollars: grace 1, factor 2, trial budget 8
# (FID, std) at each rung, then the final FID; trials run one at a time in this order
CURVES = {
    "A": [(100, 2), (90, 2), (80, 2), 70],  # first everywhere: promoted
    "C": [(106, 3), (88, 3), (79, 3), 69],  # a noisy bad first reading, within its interval of the cut (100)
    "B": [(150, 2), (140, 2), (130, 2), 120],  # far worse than the cut (106) at rung 0
    "D": [(102, 2), (120, 2), (110, 2), 100],  # fine at rung 0, far worse than the cut (90) at rung 1
    "E": [(103, 2), (93, 2), (95, 2), 90],  # within noise at rung 1 (cut 90), worse at rung 2 (cut 80)
}
EXPECTED_STOP = {"A": None, "C": None, "B": 1.0, "D": 2.0, "E": 4.0}  # the rung each trial ends at


def test_the_cut_is_the_worst_promoted_reading():
    readings = [Reading(v) for v in (100, 150, 106, 102, 103)]
    assert rung_cut(readings[:1], 2, "min").value == 100  # the first arrival is its own cut
    assert rung_cut(readings[:2], 2, "min").value == 100  # ceil(2/2) = 1st best
    assert rung_cut(readings[:3], 2, "min").value == 106  # ceil(3/2) = 2nd best
    assert rung_cut(readings, 2, "min").value == 103  # ceil(5/2) = 3rd best
    assert rung_cut(readings, 3, "min").value == 102  # ceil(5/3) = 2nd best
    assert rung_cut(readings[:3], 2, "max").value == 106  # maximising: 2nd largest of 100, 150, 106


def test_a_reading_is_stopped_only_beyond_the_combined_noise():
    cut = Reading(100.0, 3.0)
    assert not worse_beyond_noise(Reading(110.0, 4.0), cut, "min", 2.0)  # 10 <= 2 x 5
    assert worse_beyond_noise(Reading(110.1, 4.0), cut, "min", 2.0)
    assert worse_beyond_noise(Reading(100.5, 4.0), cut, "min", 0.0)  # noise_k 0: plain ASHA
    assert worse_beyond_noise(Reading(93.9, 0.0), cut, "max", 2.0)  # maximising: 6.1 below the cut > 2 x 3
    assert not worse_beyond_noise(Reading(94.0, 0.0), cut, "max", 2.0)


def test_decisions_follow_the_curves_and_plain_asha_would_stop_the_noisy_trial():
    def stops(noise_k: float) -> dict[str, float | None]:
        scheduler = CostHalving("fid_8", "min", RUNGS, 2.0, noise_k=noise_k)
        ended: dict[str, float | None] = {}
        for name, curve in CURVES.items():
            ended[name] = None
            for rung, (value, std) in zip(RUNGS, curve[:3]):
                if scheduler.decide(name, rung, Reading(value, std)).stop:
                    ended[name] = rung
                    break
        return ended

    assert stops(2.0) == EXPECTED_STOP
    assert stops(0.0)["C"] == 1.0  # the noise-blind rule stops the good trial on its one bad reading


def test_brackets_start_later_and_ignore_lower_rungs():
    scheduler = CostHalving("fid_8", "min", RUNGS, 2.0, brackets=2)
    assert scheduler.decide("t0", 1.0, Reading(100)).bracket == 0
    assert scheduler.decide("t1", 1.0, Reading(100)) is None  # bracket 1 starts at $2
    decision = scheduler.decide("t1", 2.0, Reading(300))
    assert (decision.bracket, decision.rung, decision.stop) == (1, 0, False)  # alone in its bracket's rung
    assert scheduler.decide("t0", 3.0, Reading(1)) is None  # not a rung


@pytest.mark.ray
def test_tune_stops_exactly_the_trials_worse_than_each_rung_cut(ray_local, tmp_path):
    """Five Tune trials, one at a time, report their known FID curves at the rungs: the scheduler stops
    B at $1, D at $2 and E at $4, and lets A and C (one noisy reading inside its interval) finish."""
    from ray import tune

    rungs, target = RUNGS, TARGET_USD

    def curve_trainable(config):  # nested: Ray pickles it by value (workers cannot import this module)
        curve = config["curve"]
        for rung, (value, std) in zip(rungs, curve[:3]):
            tune.report({target: rung, "fid_8": float(value), "fid_8_std": float(std), "cost_usd": rung,
                         "name": config["name"]})
        tune.report({"fid_8": float(curve[3]), "cost_usd": 8.0, "budget_done": 1.0, "name": config["name"]})

    scheduler = CostHalving("fid_8", "min", RUNGS, 2.0, noise_k=2.0)
    tuner = tune.Tuner(
        curve_trainable,
        param_space={"name": tune.grid_search(list(CURVES)), "curve": tune.sample_from(
            lambda spec: CURVES[spec.config.name])},
        tune_config=tune.TuneConfig(scheduler=scheduler, max_concurrent_trials=1),
        run_config=tune.RunConfig(name="halving", storage_path=str(tmp_path), verbose=0),
    )
    results = tuner.fit()
    ended = {}
    for result in results:
        history = result.metrics_dataframe
        name = history["name"].iloc[-1]
        finished = "budget_done" in history and history["budget_done"].fillna(0).iloc[-1] == 1.0
        ended[name] = None if finished else float(history[TARGET_USD].iloc[-1])
        assert result.error is None
    assert ended == EXPECTED_STOP


@pytest.mark.parametrize("bad", [{"type": "cost_asha"}, {"type": "cost_asha", "grace_dollars": 9.0}])
def test_spec_errors_name_the_scheduler_field(bad):
    from microdit.config.sweep import load_sweep
    from microdit.errors import ConfigError

    spec = load_sweep("quickstart").to_dict()
    spec.update(trial_budget={"dollars": 8.0}, scheduler=bad)
    with pytest.raises(ConfigError, match="grace_dollars"):
        load_sweep(spec)


def test_groups_compare_only_like_with_like():
    """With group_by the masking strategy, a masked trial's pre-fine-tune reading is cut only against
    masked trials: 150 is far worse than the unmasked 100 but the best of its own group."""
    scheduler = CostHalving("fid_8", "min", RUNGS, 2.0)
    assert not scheduler.decide("none", 1.0, Reading(100, 2), ("none",)).stop
    assert not scheduler.decide("masked", 1.0, Reading(150, 2), ("deferred",)).stop
    assert scheduler.decide("masked2", 1.0, Reading(170, 2), ("deferred",)).stop


def test_group_by_must_name_swept_keys():
    from microdit.config.sweep import load_sweep
    from microdit.errors import ConfigError

    spec = load_sweep("quickstart").to_dict()
    spec.update(trial_budget={"dollars": 8.0}, scheduler={"type": "cost_asha", "grace_dollars": 1.0,
                                                          "group_by": ["model.masking"]})
    with pytest.raises(ConfigError, match=r"scheduler.group_by.*must name swept keys"):
        load_sweep(spec)
    spec["scheduler"]["group_by"] = ["model.mixer_depth"]
    assert load_sweep(spec).scheduler.group_by == ["model.mixer_depth"]
