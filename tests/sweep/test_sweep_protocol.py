"""The paper's protocol (fine-tune inside the budget), seed replicates, and the report's arithmetic,
as plain functions with numbers (no Ray)."""

from __future__ import annotations

import pytest
import ray.tune
import yaml

from microdit.config.recipe import RecipeConfig
from microdit.config.shipped import SWEEPS, resolve
from microdit.config.sweep import load_sweep
from microdit.errors import ConfigError
from microdit.sweep.accounting import FINAL_COST, sweep_total, trial_final_metrics, usd
from microdit.sweep.report import configurations, tune_trial_id


def _spec(**changes):
    data = yaml.safe_load(resolve("mask_ratio", SWEEPS).read_text())
    data.update(changes)
    return load_sweep(data)


def test_finetune_is_cut_from_the_trial_budget():
    spec = load_sweep("mask_ratio")
    assert spec.finetune is not None and spec.finetune.dollars == 2.5 and spec.trial_dollars == 25.0
    naive = spec.grid()[3]  # naive masking at 0.75
    recipe = RecipeConfig.from_dict(spec.trial_recipe(naive, "t"))
    swept, finetune = recipe.phases
    assert (swept.dollars, finetune.dollars, recipe.max_dollars) == (22.5, 2.5, 25.0)
    assert swept.mask_ratio == 0.75 and swept.steps is None and swept.images is None
    assert finetune.mask_ratio == 0.0 and finetune.micro_batch == 128 and finetune.lr == swept.lr
    assert finetune.lr_schedule == "constant" and finetune.warmup_steps == 0 and finetune.optimizer_state == "keep"
    assert load_sweep("paper").finetune.dollars == 4.5


def test_finetune_in_images_and_unit_errors():
    spec = _spec(trial_budget={"images": 10_000}, finetune={"images": 2_000, "lr": 1e-4})
    recipe = RecipeConfig.from_dict(spec.trial_recipe(spec.grid()[0], "t"))
    assert [p.images for p in recipe.phases] == [8_000, 2_000] and recipe.max_images == 10_000
    assert recipe.phases[1].lr == 1e-4
    with pytest.raises(ConfigError, match=r"finetune\.images=None: the fine-tune must be given in the trial "
                                          r"budget's unit \(images\)"):
        _spec(trial_budget={"images": 10_000}, finetune={"dollars": 1.0})
    with pytest.raises(ConfigError, match=r"finetune\.dollars=30\.0: must be below the trial budget \(25\.0\)"):
        _spec(finetune={"dollars": 30.0})


def test_finetune_cuts_the_last_phase_and_copies_only_what_it_should():
    """Earlier phases stay as they are; the last loses its own length (steps) for the budget's
    remainder; the fine-tune drops the phase's masking strategy and EMA unless it sets its own."""
    from microdit.config.sweep import Finetune

    phases = [{"name": "warm", "steps": 5, "lr": 1e-3},
              {"name": "swept", "steps": 9, "mask_ratio": 0.75, "masking": "naive", "ema_half_life_images": 500,
               "lr": 2e-3, "warmup_steps": 3, "lr_schedule": "cosine"}]
    cut = Finetune(images=2_500).apply(phases, "images", 10_000.0)
    assert cut[0] == phases[0] and [p["name"] for p in cut] == ["warm", "swept", "finetune"]
    assert "steps" not in cut[1] and cut[1]["images"] == 7_500 and isinstance(cut[1]["images"], int)
    assert cut[1]["masking"] == "naive" and cut[1]["ema_half_life_images"] == 500  # the swept phase keeps them
    finetune = cut[2]
    assert "masking" not in finetune and "ema_half_life_images" not in finetune and "steps" not in finetune
    assert (finetune["images"], finetune["mask_ratio"], finetune["lr_schedule"], finetune["warmup_steps"],
            finetune["optimizer_state"], finetune["ema_start_images"], finetune["lr"]) == \
        (2_500, 0.0, "constant", 0, "keep", 0, 2e-3)
    by_images = [{**phases[1], "steps": None, "images": 900}]  # a last phase given in images, budget in dollars
    with_ema = Finetune(dollars=1.0, ema_half_life_images=100.0, lr=5e-4, micro_batch=8).apply(by_images, "dollars", 4.0)
    assert "images" not in with_ema[0] and "images" not in with_ema[1]  # one length per phase: the budget's
    with_ema = Finetune(dollars=1.0, ema_half_life_images=100.0, lr=5e-4, micro_batch=8).apply(phases, "dollars", 4.0)
    assert with_ema[1]["dollars"] == 3.0 and with_ema[2]["ema_half_life_images"] == 100.0
    assert (with_ema[2]["lr"], with_ema[2]["micro_batch"]) == (5e-4, 8)
    with pytest.raises(ConfigError) as info:
        _spec(finetune={"dollars": 25.0})  # the whole budget: nothing left to sweep
    assert str(info.value) == "sweep <inline>: finetune.dollars=25.0: must be below the trial budget (25.0)"


def test_fingerprint_ignores_the_description_and_grid_values_only_for_listed_kinds():
    spec = _spec(description="one text")
    assert "description" not in spec.fingerprint() and spec.fingerprint() == _spec(description="other").fingerprint()
    assert _spec().fingerprint() == spec.fingerprint()  # a spec without a description has the same fingerprint
    sampled = _spec(space={"phases[0].lr": {"loguniform": [1e-4, 1e-3]}}, search={"algorithm": "tpe", "seed": 0},
                    budget={"max_trials": 3, "max_concurrent": 1})
    assert sampled.space[0].grid_values() == ()


def test_seed_replicates():
    spec = load_sweep("mask_ratio_demo")
    assert spec.seeds == 2 and len(spec.grid()) == 5 and spec.num_trials() == 10
    assert [r for _, r in spec.grid_trials()[:4]] == [0, 1, 0, 1]
    base = spec.trial_recipe(spec.grid()[1], "t", 0)
    other = spec.trial_recipe(spec.grid()[1], "t", 1)
    assert (other["seed"], other["data"]["seed"]) == (base.get("seed", 0) + 1, base["data"].get("seed", 0) + 1)
    recipe = RecipeConfig.from_dict(other)
    assert [p.name for p in recipe.phases] == ["swept", "finetune"] and recipe.phases[1].ema_half_life_images == 500
    with pytest.raises(ConfigError, match="seeds=2: replicates need search.algorithm: grid"):
        _spec(seeds=2, search={"algorithm": "tpe"}, space={"phases[0].mask_ratio": {"choice": [0.5, 0.75]}})

    data = yaml.safe_load(resolve("mask_ratio_demo", SWEEPS).read_text())
    data["overrides"] = {**data.get("overrides", {}), "seed": 5, "data.seed": 7}
    seeded = load_sweep(data)
    values = seeded.grid()[0]
    assert (seeded.trial_recipe(values, "t")["seed"], seeded.trial_recipe(values, "t")["data"]["seed"]) == (5, 7)
    third = seeded.trial_recipe(values, "t", 2)  # replicate 2: both seeds move by 2, the rest of data stays
    assert (third["seed"], third["data"]["seed"]) == (7, 9)
    assert {k: v for k, v in third["data"].items() if k != "seed"} == \
        {k: v for k, v in seeded.trial_recipe(values, "t")["data"].items() if k != "seed"}


def test_sweep_space_rules_name_the_key():
    with pytest.raises(ConfigError) as info:
        _spec(space={"phases[0].lr": {"uniform": [1e-3, 1e-3]}}, search={"algorithm": "tpe", "seed": 0})
    assert "space.phases[0].lr" in str(info.value) and "[0.001, 0.001]" in str(info.value)
    with pytest.raises(ConfigError) as info:
        _spec(space={"phases[0].lr": {"uniform": [1e-3, 1e-2], "choice": [1]}})
    from microdit.config.sweep import DISTRIBUTIONS

    assert str(info.value) == ("sweep <inline>: space.phases[0].lr={'uniform': [0.001, 0.01], 'choice': [1]}: "
                               f"must be one mapping like {{choice: [...]}}; kinds: {', '.join(DISTRIBUTIONS)}")
    assert "uniform" in DISTRIBUTIONS and "choice" in DISTRIBUTIONS
    with pytest.raises(ConfigError) as info:
        _spec(space={"phases[0].lr": [1e-3]})
    assert "space.phases[0].lr=[0.001]: must be one mapping like {choice: [...]}" in str(info.value)


def test_trial_final_metrics_add_up():
    train = {"cost_usd": 1.5, "gpu_hours": 0.4, "images_seen": 2400, "global_step": 75}
    evaluation = {"fid_128": 90.0, "fid_128_std": 3.0, "eval_seconds": 360.0}
    final = trial_final_metrics(train, evaluation, price_per_device_hour=3.0, devices=2)
    assert final["final/eval_usd"] == pytest.approx(0.6)  # 0.1 h x 2 devices x $3
    assert final[FINAL_COST] == final["cost_usd"] == pytest.approx(2.1)
    assert final["final/gpu_hours"] == pytest.approx(0.6) and final["fid_128_std"] == 3.0
    assert trial_final_metrics(train, None, 3.0, 2)[FINAL_COST] == 1.5
    rows = [{FINAL_COST: 2.1, "cost_usd": 2.1}, {"cost_usd": 0.7}]  # a failed trial has no final/* yet
    assert sweep_total(rows, overhead_usd=0.25) == pytest.approx(3.05)


def test_configurations_average_replicates():
    rows = [{"trial": "s-a", "mask": 0.5, "fid": 100.0, "fid_std": 9.0, "cost_usd": 1.0},
            {"trial": "s-b", "mask": 0.5, "fid": 110.0, "fid_std": 9.0, "cost_usd": 3.0},
            {"trial": "s-c", "mask": 0.0, "fid": 80.0, "fid_std": 4.0, "cost_usd": 2.0}]
    masked, plain = configurations(rows, ["mask"], ["fid", "cost_usd"])
    assert masked["n"] == 2 and masked["fid"] == 105.0 and masked["fid_std"] == pytest.approx(7.0710678)
    assert masked["cost_usd"] == 2.0 and masked["trials"] == "a,b"
    assert plain["n"] == 1 and plain["fid_std"] == 4.0  # one seed: its own (resampling) std


def test_tune_trial_id_from_metrics_or_directory():
    path = "/runs/sweeps/q/tune/run_trial_4b44bbbe_00001_1_x0=0.75_2026-12-01_06-00-00"
    assert tune_trial_id(ray.tune.Result(metrics={}, checkpoint=None, error=None, path=path)) == "4b44bbbe"
    assert tune_trial_id(ray.tune.Result(metrics={"trial_id": "abc12"}, checkpoint=None, error=None, path=path)) == "abc12"


def test_money_is_printed_with_its_significant_digits():
    assert [usd(1890.7612), usd(0.0123456), usd(0.000133612), usd(0.0)] == ["$1,890.76", "$0.0123", "$0.000134", "$0"]


def test_spec_files_name_themselves_in_errors(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_sweep(str(broken))
    assert str(info.value).startswith(f"{broken}: not valid YAML (")
    listed = tmp_path / "listed.yaml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError) as info:
        load_sweep(str(listed))
    assert str(info.value) == f"sweep {listed}: expected a mapping"
    data = yaml.safe_load(resolve("mask_ratio", SWEEPS).read_text())
    data["space"] = {"phases[0].lr": {"uniform": [-0.5, 1e-3]}}  # the low corner is no valid recipe
    data["search"] = {"algorithm": "tpe", "seed": 0}
    bad = tmp_path / "bad_corner.yaml"
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as info:
        load_sweep(str(bad))
    assert str(info.value).startswith(f"sweep {bad}: ") and "phases[0].lr=-0.5" in str(info.value)
