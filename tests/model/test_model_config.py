"""Invalid architectures fail at construction with a ConfigError naming the field."""

from __future__ import annotations

import pytest

from microdit.config.model import ModelConfig
from microdit.errors import ConfigError
from microdit.model.sizes import model_config

INVALID = [  # (overrides on MicroDiT_Nano_2, field named in the message)
    ({"masking": "deferred", "mixer_depth": 0}, "model.masking"),
    ({"masking": "naive"}, "model.masking"),  # naive with a mixer
    ({"masking": "random"}, "model.masking"),
    ({"width": 100}, "model.width"),  # not a multiple of head_dim 32
    ({"mask_ratio": 1.0}, "model.mask_ratio"),
    ({"masking": "none", "mixer_depth": 0, "mask_ratio": 0.5}, "model.mask_ratio"),
    ({"num_experts": 1}, "model.num_experts"),
    ({"num_experts": 0, "dense_twin": True}, "model.dense_twin"),
    ({"mixer_width": 100}, "model.mixer_width"),
    ({"expert_capacity": 0.0}, "model.expert_capacity"),
    ({"experts_every_n": 0}, "model.experts_every_n"),
    ({"qkv_ratio_range": (1.0, 0.5)}, "model.qkv_ratio_range"),
    ({"ffn_ratio_range": (0.0, 4.0)}, "model.ffn_ratio_range"),
    ({"patch_size": 0}, "model.patch_size"),
    ({"latent_channels": 2.5}, "model.latent_channels"),
    ({"pos_interp_scale": -1.0}, "model.pos_interp_scale"),
]


@pytest.mark.parametrize("overrides,field", INVALID, ids=[f for _, f in INVALID])
def test_invalid_combinations_name_the_field(overrides, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")) as err:
        model_config("MicroDiT_Nano_2", **overrides)
    assert isinstance(err.value, ValueError)
    assert "\n" not in str(err.value)  # one line for the CLI


def test_unknown_fields_and_sizes():
    with pytest.raises(ConfigError, match=r"^model\.widht: unknown key; allowed: caption_dim, dense_twin, depth,"):
        model_config("MicroDiT_Nano_2", widht=128)
    with pytest.raises(ConfigError, match=r"^model\.bogus: unknown key; allowed: caption_dim,"):
        ModelConfig.from_dict({"width": 128, "bogus": 1})
    with pytest.raises(ConfigError, match=r"^model\.depth='deep': Input should be a valid integer"):
        ModelConfig.from_dict({"depth": "deep"})
    with pytest.raises(ConfigError, match="model.size='MicroDiT_Huge_2'"):
        model_config("MicroDiT_Huge_2")
    with pytest.raises(ConfigError, match="model.patch_size=2"):
        model_config("MicroDiT_Nano_2").num_tokens(33)


def test_round_trip_through_a_dict():
    cfg = model_config("MicroDiT_XL_2", caption_dim=384)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert ModelConfig.from_dict({**cfg.to_dict(), "qkv_ratio_range": [0.5, 1.0]}) == cfg  # YAML lists


def test_token_counts_are_integers_of_whole_patches():
    from microdit.model.sizes import model_config

    cfg = model_config("MicroDiT_XL_2")  # patch 2
    assert cfg.num_tokens(32) == 256 and isinstance(cfg.num_tokens(32), int) and cfg.num_tokens(64) == 1024
    assert cfg.kept_tokens(32, 0.0) == 256 and cfg.kept_tokens(32, 0.75) == 64 and cfg.kept_tokens(32, 0.5) == 128
    assert cfg.kept_tokens(64, 0.75) == 256 and cfg.kept_tokens(32, 0.7) == int(256 * 0.3)  # floor, as the model drops


def test_width_rounding_and_the_default_position_scale():
    from microdit.config.model import round_up

    assert [round_up(v, 8) for v in (1, 7, 8, 9, 16, 17)] == [8, 8, 8, 16, 16, 24]  # exact multiples stay
    cfg = model_config("MicroDiT_XL_2")
    assert cfg.pos_interp_scale is None
    assert [cfg.pos_scale(grid) for grid in (8, 16, 32, 64)] == [0.5, 1.0, 2.0, 4.0]  # official: grid / 16
    assert cfg.replace(pos_interp_scale=3.0).pos_scale(32) == 3.0  # a given scale wins


def test_layerwise_scaling_spreads_the_ratios_over_depth_and_off_uses_the_top():
    import numpy as np

    cfg = model_config("MicroDiT_XL_2")  # official: qkv 0.5 -> 1.0, ffn 0.5 -> 4.0 over 28 blocks
    assert cfg.layerwise_scaling and cfg.depth == 28
    assert [cfg.qkv_ratio(i) for i in range(28)] == np.linspace(0.5, 1.0, 28).tolist()
    assert [cfg.ffn_ratio(i) for i in range(28)] == np.linspace(0.5, 4.0, 28).tolist()
    flat = cfg.replace(layerwise_scaling=False)
    assert {flat.qkv_ratio(i) for i in range(28)} == {1.0} and {flat.ffn_ratio(i) for i in range(28)} == {4.0}
