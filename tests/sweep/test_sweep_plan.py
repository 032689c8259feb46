"""``microdit sweep SPEC --dry-run``: each trial's predicted dollars and hours, the total, the budget.

Expected numbers are worked out from the recipe: images (steps x batch size), images/s (CPU: 20
unless given; GPU: MFU x peak x devices / FLOPs per image), the price per device-hour
(``PRICE_PER_HOUR``: CPU $0.05, H100 $3.79) and the billed devices (``resources.num_workers``).
"""

from __future__ import annotations

import pytest
import yaml

from microdit.config.shipped import SWEEPS, resolve
from microdit.config.sweep import load_sweep
from microdit.sweep.plan import format_plan, trial_cost

CPU_PRICE = 0.05  # $ per device-hour
H100_PRICE = 3.79


def _quickstart(**changes):
    """The shipped quickstart spec with top-level sections replaced and overrides added."""
    data = yaml.safe_load(resolve("quickstart", SWEEPS).read_text())
    data["overrides"].update(changes.pop("overrides", {}))
    data.update(changes)
    return load_sweep(data)


def test_quickstart_plan():
    """4 trials of 800 x 16 + 200 x 16 = 16,000 images at 20 images/s on 1 CPU worker: 800 s =
    0.2222 h, x $0.05 = $0.01111 each, $0.04444 in all; the protocol note names 12 steps, guidance 3."""
    assert format_plan(load_sweep("quickstart")) == "\n".join([
        "trials: 4; predicted total: $0.0444",
        "sweep quickstart: grid search: 4 configurations; objectives fid_128 (min), cost_usd (min); max concurrent 2",
        "#  model.mixer_depth  phases[0].mask_ratio  pred_wall_hours  pred_cost",
        "-  -----------------  --------------------  ---------------  ---------",
        "0  1                  0                     0.222            $0.0111  ",
        "1  1                  0.75                  0.222            $0.0111  ",
        "2  2                  0                     0.222            $0.0111  ",
        "3  2                  0.75                  0.222            $0.0111  ",
        "note: trials are evaluated with 12 Heun steps, guidance 3 (official monitoring: 30 / 5): compare their "
        "FIDs only with FIDs of the same protocol",
    ])


def test_bundle_plan_with_seeds_and_a_budget():
    """mask_ratio_demo: 5 bundles x 2 seeds, $0.0025 per trial on 2 CPU workers ($0.10/h): 0.025 h
    each; 10 trials = $0.025 of the $0.05 budget. Bundle labels keep their full dotted keys."""
    lines = format_plan(load_sweep("mask_ratio_demo")).splitlines()
    assert lines[0] == ("trials: 10; predicted total: $0.025; sweep budget $0.05 (no trial starts once spent + "
                        "committed would pass it)")
    assert lines[1] == ("sweep mask_ratio_demo: grid search: 5 configurations x 2 seeds = 10 trials; objectives "
                        "fid_128 (min), cost_usd (min); max concurrent 1")
    assert lines[2].split() == ["#", "strategy", "pred_wall_hours", "pred_cost"]
    assert [line.split() for line in lines[4:9]] == [
        ["0", "model.masking=none,model.mixer_depth=0,model.mask_ratio=0.0,phases[0].mask_ratio=0.0", "0.025",
         "$0.0025"],
        ["1", "model.masking=naive,model.mixer_depth=0,phases[0].mask_ratio=0.5", "0.025", "$0.0025"],
        ["2", "model.masking=naive,model.mixer_depth=0,phases[0].mask_ratio=0.75", "0.025", "$0.0025"],
        ["3", "model.masking=deferred,phases[0].mask_ratio=0.5", "0.025", "$0.0025"],
        ["4", "model.masking=deferred,phases[0].mask_ratio=0.75", "0.025", "$0.0025"],
    ]
    assert len(lines) == 10 and lines[9].startswith("note: trials are evaluated with 12 Heun steps, guidance 3")


def test_gpu_bundle_plan_in_dollars_without_a_protocol_note():
    """mask_ratio: $25 per trial on one H100 at $3.79/h = 6.596 h; 9 trials = $225 of $250. The
    official protocol (30 steps, guidance 5): no note; its anytime readings are named."""
    lines = format_plan(load_sweep("mask_ratio")).splitlines()
    assert lines[0] == ("trials: 9; predicted total: $225.00; sweep budget $250.00 (no trial starts once spent + "
                        "committed would pass it)")
    assert lines[1].startswith("sweep mask_ratio: grid search: 9 configurations; objectives fid_10k (min), "
                               "cost_usd (min); max concurrent 8")
    assert [line.split()[2:] for line in lines[4:13]] == [[f"{25.0 / H100_PRICE:.3g}", "$25.00"]] * 9
    assert lines[13] == ("anytime readings (10000-sample FID, billed to the trial) at 0.25 of the budget, 0.5 of the "
                         "budget, 0.75 of the budget")
    assert len(lines) == 2 + 2 + 9 + 1  # no note line


def test_cost_asha_plan_names_rungs_groups_and_an_upper_bound():
    """paper: rungs at $10, $20, $40 of $45.48, compared within each masking group."""
    last = format_plan(load_sweep("paper")).splitlines()[-1]
    assert last == ("anytime readings (10000-sample FID, billed to the trial) at $10.00, $20.00, $40.00; cost_asha on "
                    "fid_10k (min) stops a trial at a rung ($10.00, $20.00, $40.00) when it is worse than the best 1/2 "
                    "there (of its group by masking) by more than 2 x the combined std: the total above is without any "
                    "stop (an upper bound)")


def test_grid_plan_stops_at_max_trials():
    lines = format_plan(_quickstart(budget={"max_trials": 3, "max_concurrent": 1})).splitlines()
    assert lines[0] == "trials: 3; predicted total: $0.0333"  # 3 x $0.01111
    assert lines[1].startswith("sweep quickstart: grid search: 3 configurations; ")
    assert len(lines) == 2 + 2 + 3 + 1  # answer, heading, table header, 3 trials, protocol note


def test_sampled_plan_lists_corners_and_an_upper_bound():
    """Optuna samples: the plan lists the space's corners (int bounds x every choice) and bounds the
    total by max_trials x the dearest corner. 400 steps: 400 x 16 + 3,200 = 9,600 images = 480 s =
    0.1333 h = $0.006667; 800 steps: 16,000 images = 0.2222 h = $0.01111; 5 x $0.01111 = $0.0556."""
    spec = _quickstart(space={"phases[0].steps": {"int": [400, 800]}, "phases[0].mask_ratio": {"choice": [0.0, 0.75]}},
                       search={"algorithm": "tpe"}, budget={"dollars": 2.5, "max_trials": 5, "max_concurrent": 1})
    lines = format_plan(spec).splitlines()
    assert lines[0] == ("trials: 5; predicted total: $0.0556 (upper bound: max_trials x the dearest corner); "
                        "sweep budget $2.50 (no trial starts once spent + committed would pass it)")
    assert lines[1] == ("sweep quickstart: tpe search: up to 5 trials sampled; the space's corners (cost range) are "
                        "listed; objectives fid_128 (min), cost_usd (min); max concurrent 1")
    assert [line.split() for line in lines[2:8]] == [
        ["#", "phases[0].steps", "phases[0].mask_ratio", "pred_wall_hours", "pred_cost"],
        ["-", "---------------", "--------------------", "---------------", "---------"],
        ["0", "400", "0", "0.133", "$0.00667"],
        ["1", "400", "0.75", "0.133", "$0.00667"],
        ["2", "800", "0", "0.222", "$0.0111"],
        ["3", "800", "0.75", "0.222", "$0.0111"],
    ]


def test_sampled_plan_of_a_continuous_space_uses_its_bounds():
    """uniform: the two bounds are the corners; the price does not depend on the mask ratio on CPU."""
    spec = _quickstart(space={"phases[0].mask_ratio": {"uniform": [0.25, 0.5]}}, search={"algorithm": "random"})
    lines = format_plan(spec).splitlines()
    # quickstart's 4 trials x the dearer corner ($0.01111 for both)
    assert lines[0] == "trials: 4; predicted total: $0.0444 (upper bound: max_trials x the dearest corner)"
    assert [line.split()[:2] for line in lines[4:6]] == [["0", "0.25"], ["1", "0.5"]]
    assert lines[1].startswith("sweep quickstart: random search: up to 4 trials sampled;")


def _cost(spec, images_per_s=None):
    return trial_cost(spec, {"model.mixer_depth": 1, "phases[0].mask_ratio": 0.0}, images_per_s)


def test_trial_cost_from_images_at_a_given_or_default_cpu_speed():
    dollars, hours = _cost(load_sweep("quickstart"))  # 16,000 images / 20 per s = 800 s
    assert hours == pytest.approx(800 / 3600, rel=1e-12)
    assert dollars == pytest.approx(800 / 3600 * CPU_PRICE, rel=1e-12)
    dollars, hours = _cost(load_sweep("quickstart"), images_per_s=64.0)  # 250 s
    assert (hours, dollars) == pytest.approx((250 / 3600, 250 / 3600 * CPU_PRICE), rel=1e-12)
    # two workers: the same wall time (images/s is the whole run's), twice the device-hours
    dollars, hours = _cost(_quickstart(overrides={"resources.num_workers": 2}))
    assert (hours, dollars) == pytest.approx((800 / 3600, 800 / 3600 * 2 * CPU_PRICE), rel=1e-12)


def test_trial_cost_is_capped_by_the_trial_budget():
    # 1,000 + 200 steps of 16 = 19,200 images, but the trial budget stops it at 16,000: 800 s
    spec = _quickstart(overrides={"phases[0].steps": 1000})
    assert _cost(spec) == pytest.approx((800 / 3600 * CPU_PRICE, 800 / 3600), rel=1e-12)
    # a dollar budget below the predicted $0.02222 (2 workers): the budget, for $0.005 / $0.10 per hour
    spec = _quickstart(overrides={"resources.num_workers": 2}, trial_budget={"dollars": 0.005})
    assert _cost(spec) == pytest.approx((0.005, 0.05), rel=1e-12)
    # a dollar budget above the prediction changes nothing
    spec = _quickstart(overrides={"resources.num_workers": 2}, trial_budget={"dollars": 1.0})
    assert _cost(spec) == pytest.approx((800 / 3600 * 2 * CPU_PRICE, 800 / 3600), rel=1e-12)


def test_trial_cost_on_gpus_assumes_half_the_peak():
    """On an H100 without a given speed: images/s = 0.5 x 989e12 FLOP/s x 1 device / FLOPs per image
    (the analytic count of each phase's model, resolution and mask ratio)."""
    from microdit.config.recipe import RecipeConfig
    from microdit.model.flops import train_flops_per_image

    spec = _quickstart(overrides={"resources.use_gpu": True, "resources.accelerator": "H100"})
    recipe = RecipeConfig.from_dict(spec.trial_recipe({"model.mixer_depth": 1, "phases[0].mask_ratio": 0.0}, "t"))
    model = recipe.architecture()
    seconds = sum(p.steps * p.batch_size * train_flops_per_image(model, p.resolution, p.mask_ratio, recipe.caption_len)
                  / (0.5 * 989e12) for p in recipe.phases)  # vae_factor 1: the latent is the resolution
    dollars, hours = _cost(spec)
    assert hours == pytest.approx(seconds / 3600, rel=1e-12)
    assert dollars == pytest.approx(seconds / 3600 * H100_PRICE, rel=1e-12)
    assert _cost(spec, images_per_s=40.0) == pytest.approx((400 / 3600 * H100_PRICE, 400 / 3600), rel=1e-12)


def test_a_single_configuration_grid_and_a_large_sampled_space():
    one = format_plan(_quickstart(space={"model.mixer_depth": {"grid": [1]}})).splitlines()
    assert one[0] == "trials: 1; predicted total: $0.0111" and len(one) == 2 + 2 + 1 + 1
    # 2^7 = 128 corners: the plan lists the first 64
    space = {key: {"choice": [low, high]} for key, low, high in (
        ("phases[0].mask_ratio", 0.0, 0.5), ("phases[0].lr", 1e-3, 2e-3), ("phases[1].lr", 1e-4, 2e-4),
        ("data.synthetic_fraction", 0.0, 0.2), ("phases[0].warmup_steps", 10, 20), ("phases[0].grad_clip", 1.0, 2.0),
        ("phases[0].p_mean", -0.6, -0.4))}
    lines = format_plan(_quickstart(space=space, search={"algorithm": "random"})).splitlines()
    assert len(lines) == 2 + 2 + 64 + 1 and lines[-2].split()[0] == "63"


def test_grid_total_sums_its_trials_and_a_given_speed_is_used():
    """A grid whose trials differ: 400 steps ($0.006667) and 800 steps ($0.01111) sum to $0.01778."""
    spec = _quickstart(space={"phases[0].steps": {"grid": [400, 800]}})
    assert format_plan(spec).splitlines()[0] == "trials: 2; predicted total: $0.0178"
    # at 64 images/s: 16,000 images = 250 s = 0.06944 h, x $0.05 = $0.003472
    lines = format_plan(load_sweep("quickstart"), images_per_s=64.0).splitlines()
    assert lines[0] == "trials: 4; predicted total: $0.0139"
    assert lines[4].split()[3:] == ["0.0694", "$0.00347"]


def test_sampled_plan_lists_every_choice():
    spec = _quickstart(space={"phases[0].mask_ratio": {"choice": [0.0, 0.5, 0.75]}}, search={"algorithm": "tpe"})
    assert [line.split()[1] for line in format_plan(spec).splitlines()[4:7]] == ["0", "0.5", "0.75"]
