"""Sweep spec validation: each malformed spec is a ConfigError naming the key, value and fix."""

from __future__ import annotations

import copy
import json

import pytest
import yaml

from microdit.config.overrides import ABSENT, apply_overrides, get_path, parse_path
from microdit.config.sweep import load_sweep, spec_changes
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
        ({"bogus": 1}, "bogus: unknown key; allowed: base, budget, description, evaluation, experiment,"),
        ({"space": {"phases[0].mask_ratio": {"gaussian": [0, 1]}}},
         "space.phases[0].mask_ratio='gaussian': unknown distribution; allowed: uniform, loguniform, int, choice, grid"),
        ({"space": {"phases[0].mask_ratio": {"uniform": [0.9, 0.1]}}},
         "space.phases[0].mask_ratio.uniform=[0.9, 0.1]: must be [low, high] numbers with low < high"),
        ({"space": {"phases[0].lr": {"loguniform": ["0", "1e-3"]}}},
         "space.phases[0].lr.loguniform=['0', '1e-3']: low must be > 0"),
        ({"space": {"phases[0].lr": {"uniform": ["abc", 1]}}},
         "space.phases[0].lr.uniform=['abc', 1]: must be [low, high] numbers with low < high"),
        ({"space": {"model.mixer_depth": {"int": [1.5, 3]}}}, "space.model.mixer_depth.int=[1.5, 3]: bounds must be integers"),
        ({"space": {"phases[0].mask_ratio": {"choice": []}}}, "space.phases[0].mask_ratio.choice=[]: must be a non-empty list"),
        ({"space": {}}, "space={}: must map dotted recipe keys to distributions"),
        ({"space": {"phases[0].nope": {"choice": [1]}}},
         "space.phases[0].nope={'choice': [1]}: no such key in the base recipe"),
        ({"space": {"phases[3].mask_ratio": {"choice": [0.1]}}},
         "space.phases[3].mask_ratio={'choice': [0.1]}: no such key in the base recipe"),
        ({"objectives": [{"metric": "fid_128", "mode": "lowest"}]}, "objectives[0].mode='lowest': Input should be 'min' or 'max'"),
        ({"objectives": []}, "objectives=[]: List should have at least 1 item"),
        ({"trial_budget": {"hours": 1}}, "trial_budget.hours: unknown key; allowed: dollars, images"),
        ({"trial_budget": {"dollars": 1.0, "images": 64}},
         "trial_budget={'dollars': 1.0, 'images': 64}: must be exactly one of {dollars: X} or {images: N}"),
        ({"trial_budget": None}, "trial_budget: missing (required)"),
        ({"budget": {"max_trials": 0}}, "budget.max_trials=0: Input should be greater than 0"),
        ({"budget": {"max_trials": 1.5}}, "budget.max_trials=1.5: Input should be a valid integer"),
        ({"budget": {"dollars": -1}}, "budget.dollars=-1: Input should be greater than 0"),
        ({"scheduler": {"type": "hyperband"}}, "scheduler.type='hyperband': Input should be 'none', 'asha' or 'cost_asha'"),
        ({"scheduler": {"type": "cost_asha", "grace_dollars": 0.1}},
         "scheduler.rungs=None: with an image trial budget the rungs' count is needed"),
        ({"scheduler": {"type": "cost_asha", "grace_dollars": 0.1, "rungs": 2, "metric": "cost_usd"}},
         "scheduler.metric='cost_usd': cost_asha prunes on a milestone reading: a fid_N objective or clip_score"),
        ({"seeds": "auto"}, "seeds='auto': replicates need search.algorithm: grid"),
        ({"evaluation": {"at_fraction": [1.5]}}, "evaluation.at_fraction[0]=1.5: Input should be less than 1"),
        ({"scheduler": {"type": "asha"}}, "scheduler.metric=None: asha needs metric (an intermediate metric, e.g. loss)"),
        ({"search": {"algorithm": "grid"}},
         "search.algorithm='grid': needs grid/choice values for every key; not for ['model.mixer_depth']"),
        ({"space": {"phases[0].mask_ratio": {"grid": [0.0, 0.5]}}, "search": {"algorithm": "tpe"}},
         "search.algorithm='tpe': `grid` values need search.algorithm: grid"),
        ({"search": {"algorithm": "bayes"}}, "search.algorithm='bayes': Input should be 'tpe', 'nsga2', 'random' or 'grid'"),
        ({"evaluation": {"num_samples": 0}}, "evaluation.num_samples=0: Input should be greater than 0"),
        ({"evaluation": {"samples": 8}}, "evaluation.samples: unknown key; allowed: at_dollars, at_fraction, clip_model, guidance, num_samples,"),
        ({"space": {"phases[0].mask_ratio": {"choice": [1.5]}}},
         "space gives an invalid recipe for {'phases[0].mask_ratio': 1.5}: phases[0].mask_ratio=1.5: "),
        ({"space": {"model.masking": {"choice": ["none"]}}}, "space gives an invalid recipe for {'model.masking': 'none'}: "),
        ({"base": "nope"}, "base='nope': recipe 'nope': no such file"),
        ({"overrides": {"phases[9].lr": 1.0}}, "overrides={'phases[9].lr': 1.0}: key 'phases[9].lr': index [9] out of range"),
        ({"name": None}, "name: missing (required)"),
    ],
)
def test_malformed_specs_name_the_key(changes, needle):
    with pytest.raises(ConfigError) as err:
        load_sweep(spec_with(**changes))
    assert str(err.value).startswith("sweep <inline>: ")
    assert needle in str(err.value)


def test_yaml_1_1_number_strings_are_numbers():
    """PyYAML reads ``1e-4`` as a string: bounds and budgets given that way still parse."""
    data = yaml.safe_load("""
name: t
base: demo
space:
  phases[0].lr: {loguniform: [1e-4, 3e-3]}
  model.mixer_depth: {int: ["1", "3"]}
objectives: [{metric: fid_128, mode: min}]
trial_budget: {dollars: 1e-2}
budget: {dollars: 1e1}
""")
    assert data["space"]["phases[0].lr"]["loguniform"] == ["1e-4", "3e-3"]  # the YAML 1.1 quirk
    spec = load_sweep(data)
    assert spec.space[0].values == (1e-4, 3e-3) and spec.space[1].values == (1, 3)
    assert isinstance(spec.space[1].values[0], int)
    assert spec.trial_dollars == 0.01 and spec.budget_dollars == 10.0 and spec.algorithm == "tpe"


def test_to_dict_is_a_self_contained_spec_and_round_trips():
    spec = load_sweep(spec_with(overrides={"phases[0].lr": 5e-4}, description="why"))
    data = spec.to_dict()
    assert "overrides" not in data and data["base"]["phases"][0]["lr"] == 5e-4  # folded into base
    assert data["space"] == {"phases[0].mask_ratio": {"choice": [0.0, 0.5]}, "model.mixer_depth": {"int": [1, 3]}}
    assert data["search"] == {"algorithm": "nsga2", "seed": 0}  # the resolved default
    fingerprint = spec.fingerprint()
    assert "description" not in fingerprint and json.loads(json.dumps(fingerprint)) == fingerprint
    again = load_sweep(data)
    assert again.fingerprint() == fingerprint and again.space == spec.space


def test_spec_changes_name_dotted_keys():
    old = {
        "name": "t",
        "space": {"phases[0].mask_ratio": {"choice": [0.0, 0.5]}, "model.mixer_depth": {"int": [1, 3]}},
        "budget": {"dollars": 1.0, "max_trials": 3},
        "base": {"phases": [{"lr": 1e-3}, {"lr": 2e-4}], "model": {"size": "X"}},
    }
    assert spec_changes(old, copy.deepcopy(old)) == []
    new = copy.deepcopy(old)
    new["space"]["phases[0].mask_ratio"] = {"choice": [0.0, 0.75]}
    del new["space"]["model.mixer_depth"]
    new["budget"]["dollars"] = 2.0
    new["base"]["phases"][0]["lr"] = 5e-4
    new["evaluation"] = {"steps": 3}
    assert spec_changes(old, new) == [
        ("space.phases[0].mask_ratio", {"choice": [0.0, 0.5]}, {"choice": [0.0, 0.75]}),
        ("space.model.mixer_depth", {"int": [1, 3]}, ABSENT),
        ("budget.dollars", 1.0, 2.0),
        ("base.phases[0].lr", 1e-3, 5e-4),
        ("evaluation", ABSENT, {"steps": 3}),
    ]
    longer = copy.deepcopy(old)
    longer["base"]["phases"].append({"lr": 1e-4})
    assert [key for key, _, _ in spec_changes(old, longer)] == ["base.phases"]


def test_resumed_sweep_refuses_a_changed_spec(tmp_path):
    from microdit.cli.main import build_parser
    from microdit.sweep.runner import SPEC_FILE, record_spec

    spec = load_sweep(VALID)
    stored = tmp_path / SPEC_FILE
    record_spec(tmp_path, spec, resuming=False)  # first start: stored atomically
    assert json.loads(stored.read_text()) == spec.fingerprint()
    assert [p.name for p in tmp_path.iterdir()] == [SPEC_FILE]  # no temp file left behind
    record_spec(tmp_path, load_sweep(VALID), resuming=True)  # the same spec resumes

    changed = load_sweep(spec_with(space={"phases[0].mask_ratio": {"choice": [0.0, 0.75]},
                                          "model.mixer_depth": {"int": [1, 3]}},
                                   budget={"dollars": 2.0, "max_trials": 3, "max_concurrent": 1}))
    with pytest.raises(ConfigError) as err:
        record_spec(tmp_path, changed, resuming=True)
    message = str(err.value)
    assert message.startswith("sweep t: the spec changed since this sweep started")
    assert 'space.phases[0].mask_ratio: {"choice": [0.0, 0.5]} -> {"choice": [0.0, 0.75]}' in message
    assert "budget.dollars: 1.0 -> 2.0" in message and "--allow-changed-spec" in message
    assert json.loads(stored.read_text()) == spec.fingerprint()  # untouched

    record_spec(tmp_path, changed, resuming=True, allow_changed_spec=True)
    assert json.loads(stored.read_text()) == changed.fingerprint()  # the spec it now runs
    record_spec(tmp_path, spec, resuming=False)  # a fresh start (no Tune state) records its own spec
    assert json.loads(stored.read_text()) == spec.fingerprint()
    args = build_parser().parse_args(["sweep", "quickstart", "--allow-changed-spec"])
    assert args.allow_changed_spec is True


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


# (algorithm, trials, per-trial budget) as each file states them: grids are the product of their
# value lists (x seeds), sampled searches their max_trials.
SHIPPED = {
    "quickstart": ("grid", 2 * 2, ("max_images", 16_000)),
    "mask_ratio": ("grid", 9, ("max_dollars", 25.0)),
    "mask_ratio_demo": ("grid", 5 * 2, ("max_dollars", 0.0025)),
    "patch_mixer": ("nsga2", 12, ("max_dollars", 20.0)),
    "synthetic_mix": ("tpe", 10, ("max_images", 20_000_000)),
    "moe": ("grid", 2 * 3 * 2, ("max_dollars", 20.0)),
    "paper": ("grid", 2 ** 4, ("max_dollars", 45.48)),
}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_specs_have_their_trials_and_every_trial_recipe_its_budget_and_values(name):
    """Every trial of a shipped spec trains under the spec's per-trial budget (an iso-cost sweep
    that silently lost its budget would stop being one) with its swept values, bundles included."""
    from microdit.config.recipe import RecipeConfig

    spec = load_sweep(name)
    algorithm, trials, (budget_key, budget) = SHIPPED[name]
    assert (spec.algorithm, spec.num_trials()) == (algorithm, trials)
    other = "max_images" if budget_key == "max_dollars" else "max_dollars"
    combos = spec.grid() if spec.is_grid else [
        {p.key: p.values[0] if p.kind in ("grid", "choice") else p.values[1] for p in spec.space}]
    for i, values in enumerate(combos):
        recipe = spec.trial_recipe(values, f"t{i}")
        assert recipe[budget_key] == budget and recipe.get(other) is None
        for key, value in values.items():
            for path, expected in (value.items() if isinstance(value, dict) else [(key, value)]):
                assert get_path(recipe, path) == expected, (name, path)
        RecipeConfig.from_dict(recipe)  # and the result is a valid recipe
    if spec.finetune is not None:  # the fine-tune is cut from the budget, not added to it
        phases = RecipeConfig.from_dict(spec.trial_recipe(combos[0], "t")).phases
        unit = "dollars" if budget_key == "max_dollars" else "images"
        assert sum(getattr(p, unit) for p in phases[-2:]) == pytest.approx(budget)
