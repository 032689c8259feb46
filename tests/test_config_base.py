"""The one config layer's error messages (``config/base.py``): every bad input names its dotted path,
its value and what is allowed, through nested models, lists, optionals and mappings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import field_validator, model_validator

from microdit.config.base import StrictModel, dotted, need, validate_config
from microdit.errors import ConfigError


class Leaf(StrictModel):
    lr: float = 1e-3
    name: str


class Holder(StrictModel):
    inner: Leaf


class Mid(StrictModel):
    leaves: list[Leaf] = []
    holders: list[Holder] = []
    optional: Leaf | None = None
    table: dict[str, int] = {}
    named: dict[str, Leaf] = {}
    size: int | None = None

    @model_validator(mode="after")
    def _rule(self) -> Mid:
        need(len(self.leaves) < 3, "leaves", len(self.leaves), "at most 2")
        return self


class Top(StrictModel):
    mid: Mid = Mid()
    tag: str = "x"

    @model_validator(mode="after")
    def _no_boom(self) -> Top:
        if self.tag == "boom":
            raise ValueError("tag 'boom' is reserved")  # a rule about the whole config, not one field
        return self


class BadDefault(StrictModel):
    count: int = "many"  # a default that does not validate: reported without a value from the data


@pytest.mark.parametrize(("data", "message"), [
    ({"mid": {"leaves": [{"name": "a", "lrr": 1}]}}, "top.mid.leaves[0].lrr: unknown key; allowed: lr, name"),
    ({"mid": {"optional": {"name": "a", "bad": 1}}}, "top.mid.optional.bad: unknown key; allowed: lr, name"),
    ({"mid": {"named": {"k": {"name": "a", "zz": 1}}}}, "top.mid.named.k.zz: unknown key; check the spelling"),
    ({"mid": {"nope": 2}}, "top.mid.nope: unknown key; allowed: holders, leaves, named, optional, size, table"),
    ({"mid": {"holders": [{"inner": {"name": "a", "zz": 1}}]}},
     "top.mid.holders[0].inner.zz: unknown key; allowed: lr, name"),  # past a list index, into the next model
    ({"mid": {"nope": 1, "size": "abc"}}, "top.mid.size='abc': Input should be a valid integer, unable to parse "
                                          "string as an integer; top.mid.nope: unknown key; allowed: holders, leaves, "
                                          "named, optional, size, table"),
    ({"mid": {"leaves": [{"lr": "x"}]}}, "top.mid.leaves[0].lr='x': Input should be a valid number, unable to parse "
                                         "string as a number; top.mid.leaves[0].name: missing (required)"),
    ({"tag": "boom"}, "top: tag 'boom' is reserved"),
    ({"nope": 1}, "top.nope: unknown key; allowed: mid, tag"),
    ({"mid": {"table": {"a": "x"}}}, "top.mid.table.a='x': Input should be a valid integer, unable to parse string "
                                     "as an integer"),
    ({"mid": {"leaves": [{"lr": 1}]}}, "top.mid.leaves[0].name: missing (required)"),
    ({"mid": {"size": "abc"}}, "top.mid.size='abc': Input should be a valid integer, unable to parse string as an "
                               "integer"),
    ({"mid": {"leaves": [{"name": "a"}] * 3}}, "top.mid.leaves=3: at most 2"),
    ({"mid": 5}, "top.mid=5: Input should be a valid dictionary or instance of Mid"),
    ({"mid": {"leaves": [{"name": "a", "lr": "fast"}, {"name": "b", "lr": "slow"}]}},
     "top.mid.leaves[0].lr='fast': Input should be a valid number, unable to parse string as a number; "
     "top.mid.leaves[1].lr='slow': Input should be a valid number, unable to parse string as a number"),
    ({"mid": {"leaves": [{"name": "a", "lr": float("nan")}]}},
     "top.mid.leaves[0].lr=nan: Input should be a finite number"),
])
def test_errors_name_the_dotted_path_the_value_and_what_is_allowed(data, message):
    with pytest.raises(ConfigError) as info:
        validate_config(Top, data, "top")
    assert str(info.value) == message


def test_without_a_prefix_and_for_values_not_in_the_data():
    from microdit.config.base import FieldError

    with pytest.raises(ConfigError) as info:
        validate_config(Top, {"tag": 3})
    assert str(info.value) == "tag=3: Input should be a valid string"
    with pytest.raises(ConfigError) as info:
        Top.from_dict({"mid": {"nope": 1}})  # from_dict: no prefix unless given
    assert str(info.value).startswith("mid.nope: unknown key; allowed: ")
    with pytest.raises(ConfigError) as info:
        Top.from_dict({"tag": "boom"})
    assert str(info.value) == "config: tag 'boom' is reserved"
    assert str(FieldError("phases[0].lr", 0.5, "too high")) == "phases[0].lr=0.5: too high"
    with pytest.raises(ConfigError) as info:
        validate_config(BadDefault, {})  # the default is checked too, and has no value in the data
    assert str(info.value) == "count: Input should be a valid integer, unable to parse string as an integer"
    with pytest.raises(ConfigError) as info:
        validate_config(Top, [1], "top")
    assert str(info.value) == "top: expected a mapping, got list"
    with pytest.raises(ConfigError) as info:
        validate_config(Top, "x")
    assert str(info.value) == "Top: expected a mapping, got str"


def test_valid_data_round_trips_and_assignment_is_checked():
    top = validate_config(Top, {"mid": {"leaves": [{"name": "a", "lr": "1e-4"}], "optional": None}})
    assert top.mid.leaves[0].lr == 1e-4  # YAML 1.1 reads 1e-4 as a string: parsed as a number
    assert Top.from_dict(top.to_dict()) == top
    with pytest.raises(ValueError):
        top.tag = 5  # validate_assignment: a program cannot slip a wrong type in either


class Shaped(StrictModel):
    window: tuple[float, float] = (0.5, 1.0)
    where: Path = Path("/data/sets")


def test_to_dict_is_plain_json_data():
    """What is logged to MLflow and written as YAML: tuples become lists, paths strings (JSON's own types)."""
    data = Shaped().to_dict()
    assert data == {"window": [0.5, 1.0], "where": "/data/sets"}
    assert type(data["window"]) is list and type(data["where"]) is str
    assert json.loads(json.dumps(data)) == data
    assert Shaped.from_dict(data) == Shaped()


@pytest.mark.parametrize(("loc", "prefix", "text"), [
    (("phases", 0, "lr"), "", "phases[0].lr"), (("phases", 0, "lr"), "recipe", "recipe.phases[0].lr"),
    ((0, 1), "", "[0][1]"), ((), "model", "model"), ((), "", ""), (("a", "b"), "", "a.b"),
])
def test_dotted_paths(loc, prefix, text):
    assert dotted(loc, prefix) == text


def test_config_changes_name_every_difference():
    from microdit.config.overrides import ABSENT, config_changes

    old = {"seed": 0, "phases": [{"lr": 1e-3, "steps": 5}], "model": {"size": "a"}, "gone": 1}
    new = {"seed": 1, "phases": [{"lr": 5e-4, "steps": 5}], "model": {"size": "a"}, "added": 2}
    assert config_changes(old, new) == [("seed", 0, 1), ("phases[0].lr", 1e-3, 5e-4), ("gone", 1, ABSENT),
                                        ("added", ABSENT, 2)]
    assert config_changes(1, 2) == [("config", 1, 2)]  # whole configs that are not mappings
    whole_phases = config_changes(old, new, whole=lambda path: path == ("phases",))
    assert ("phases", old["phases"], new["phases"]) in whole_phases
    nested_whole = config_changes({"a": [{"b": [1]}]}, {"a": [{"b": [2]}]}, whole=lambda path: path == ("a", 0, "b"))
    assert nested_whole == [("a[0].b", [1], [2])]  # ``whole`` is passed down through lists too


class Pair(StrictModel):
    a: int
    b: int


class Checked(StrictModel):
    leaves: list[Leaf] = []

    @model_validator(mode="after")
    def _two_at_most(self) -> Checked:
        need(len(self.leaves) < 3, "leaves", len(self.leaves), "at most 2")
        return self


class Wrapped(StrictModel):
    spec: str

    @field_validator("spec")
    @classmethod
    def _known(cls, value: str) -> str:
        if value != "ok":  # as a nested config's own from_dict would: a ConfigError with its full message
            raise ConfigError(f"spec file {value!r}: no such file")
        return value


class Rows(StrictModel):
    rows: list[Checked] = []
    pairs: list[Pair] = []
    wrapped: list[Wrapped] = []


def test_every_error_is_reported_not_only_the_first():
    three = {"leaves": [{"name": "a"}] * 3}
    for data, message in [
        ({"pairs": [{}]}, "pairs[0].a: missing (required); pairs[0].b: missing (required)"),
        ({"pairs": [{"a": 1, "b": 2, "x": 1, "y": 2}]}, "pairs[0].x: unknown key; allowed: a, b; "
                                                       "pairs[0].y: unknown key; allowed: a, b"),
        ({"rows": [three, three]}, "rows[0].leaves=3: at most 2; rows[1].leaves=3: at most 2"),
        ({"wrapped": [{"spec": "a"}, {"spec": "ok"}, {"spec": "b"}], "pairs": [{"a": 1}]},
         "pairs[0].b: missing (required); spec file 'a': no such file; spec file 'b': no such file"),
    ]:
        with pytest.raises(ConfigError) as info:
            validate_config(Rows, data)
        assert str(info.value) == message
