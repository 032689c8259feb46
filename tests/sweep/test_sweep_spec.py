"""Sweep spec validation: each malformed spec is a ConfigError naming the key, value and fix."""

from __future__ import annotations

import copy

import pytest

from microdit.config.overrides import apply_overrides, get_path, parse_path
from microdit.config.sweep import load_sweep
from microdit.errors import ConfigError

VALID = {
    "name": "t",
    "base": "demo",
    "space": {"phases[0].mask_ratio": {"choice": [0.0, 0.5]}, "model.mixer_depth": {"int": [1, 3]}},
    "objectives": [{"metric": "fid_128", "mode": "min"}, {"metric": "cost_usd", "mode": "min"}],
    "trial_budget": {"images": 64},
    "budget": {"dollars": 1.0, "max_trials": 3, "max_concurrent": 1},
}


def spec_with(**changes):
    data = copy.deepcopy(VALID)
    for key, value in changes.items():
        if value is None:
            data.pop(key)
        else:
            data[key] = value
    return data


def test_valid_spec_defaults_to_nsga2_for_two_objectives():
    spec = load_sweep(VALID)
    assert spec.algorithm == "nsga2"
    assert [p.key for p in spec.space] == ["phases[0].mask_ratio", "model.mixer_depth"]
    assert spec.num_trials() == 3
    recipe = spec.trial_recipe({"phases[0].mask_ratio": 0.5, "model.mixer_depth": 2}, "x")
    assert recipe["phases"][0]["mask_ratio"] == 0.5 and recipe["model"]["mixer_depth"] == 2
    assert recipe["max_images"] == 64 and recipe["name"] == "x"


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"bogus": 1}, "bogus"),
        ({"space": {"phases[0].mask_ratio": {"gaussian": [0, 1]}}}, "space.phases[0].mask_ratio"),
        ({"space": {"phases[0].mask_ratio": {"uniform": [0.9, 0.1]}}}, "low < high"),
        ({"space": {"phases[0].nope": {"choice": [1]}}}, "nope"),
        ({"space": {"phases[3].mask_ratio": {"choice": [0.1]}}}, "phases[3].mask_ratio"),
        ({"objectives": [{"metric": "fid_128", "mode": "lowest"}]}, "objectives[0]"),
        ({"trial_budget": {"hours": 1}}, "trial_budget"),
        ({"budget": {"max_trials": 0}}, "budget.max_trials"),
        ({"scheduler": {"type": "hyperband"}}, "scheduler.type"),
        ({"scheduler": {"type": "asha"}}, "asha needs metric"),
        ({"search": {"algorithm": "grid"}}, "grid/choice values"),
        ({"space": {"phases[0].mask_ratio": {"grid": [0.0, 0.5]}}, "search": {"algorithm": "tpe"}}, "grid"),
        ({"space": {"phases[0].mask_ratio": {"choice": [1.5]}}}, "mask_ratio"),
        ({"space": {"model.masking": {"choice": ["none"]}}}, "invalid recipe"),
        ({"name": None}, "name"),
    ],
)
def test_malformed_specs_name_the_key(changes, needle):
    with pytest.raises(ConfigError) as err:
        load_sweep(spec_with(**changes))
    assert needle in str(err.value)


def test_dotted_paths_round_trip():
    tree = {"phases": [{"mask_ratio": 0.75}, {"mask_ratio": 0.0}], "model": {"size": "X"}}
    assert parse_path("phases[1].mask_ratio") == ["phases", 1, "mask_ratio"]
    updated = apply_overrides(tree, ["phases[1].mask_ratio=0.5", "model.mixer_depth=3", "data.synthetic_fraction=0.25"])
    assert get_path(updated, "phases[1].mask_ratio") == 0.5
    assert updated["model"] == {"size": "X", "mixer_depth": 3}
    assert updated["data"]["synthetic_fraction"] == 0.25
    assert tree["phases"][1]["mask_ratio"] == 0.0  # the input is not modified
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides(tree, ["phases[0].mask_ratio"])
    with pytest.raises(ConfigError, match="bad key path"):
        parse_path("phases..x")


def test_bundle_parameters_apply_several_keys():
    spec = load_sweep(spec_with(space={"strategy": {"grid": [
        {"model.masking": "naive", "model.mixer_depth": 0},
        {"model.masking": "deferred", "model.mixer_depth": 2},
    ]}}, search={"algorithm": "grid"}))
    assert spec.num_trials() == 2
    recipe = spec.trial_recipe({"strategy": spec.space[0].values[0]}, "b")
    assert recipe["model"]["masking"] == "naive" and recipe["model"]["mixer_depth"] == 0


@pytest.mark.parametrize("name", ["quickstart", "mask_ratio", "patch_mixer", "synthetic_mix", "moe", "paper"])
def test_shipped_specs_validate(name):
    spec = load_sweep(name)
    assert spec.num_trials() >= 2
    if name == "mask_ratio":  # the iso-cost question: every trial gets the same dollars
        assert spec.trial_dollars is not None and spec.num_trials() == 9
