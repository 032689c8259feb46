"""Load the authors' released MicroDiT checkpoints (SonyResearch/micro_diffusion) into our model.

Their ``DiT`` uses the same module names as ours, so loading is: translate their constructor
keyword arguments into a ``ModelConfig``, strip wrapper prefixes (``dit.``, ``module.``,
``_orig_mod.``), drop the two buffers we recompute (``pos_embed``: the fixed sin-cos table;
``mask_token``: a zero vector never trained), and check every shape. Released files (Hugging
Face ``VSehwag24/MicroDiT``, folder ``ckpts/``) are all MicroDiT_XL_2 at 512 px
(``input_size=64, pos_interp_scale=2``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from microdit.config.model import ModelConfig
from microdit.errors import ConfigError
from microdit.model.microdit import MicroDiT

RELEASED_CHECKPOINTS = (
    "dit_4_channel_22M_real_only_data.pt",
    "dit_4_channel_37M_real_and_synthetic_data.pt",
    "dit_16_channel_37M_real_and_synthetic_data.pt",  # 16-channel VAE ostris/vae-kl-f8-d16
    "dit_4_channel_0.5B_synthetic_data.pt",
)

# Their DiT constructor defaults (micro_diffusion/models/dit.py).
OFFICIAL_DEFAULTS: dict[str, Any] = {
    "input_size": 32,
    "patch_size": 2,
    "in_channels": 4,
    "dim": 1152,
    "depth": 28,
    "head_dim": 64,
    "multiple_of": 256,
    "caption_channels": 1024,
    "pos_interp_scale": 1.0,
    "norm_eps": 1e-6,
    "depth_init": True,
    "qkv_multipliers": [1.0],
    "ffn_multipliers": [4.0],
    "use_patch_mixer": True,
    "patch_mixer_depth": 4,
    "patch_mixer_dim": 512,
    "patch_mixer_qkv_ratio": 1.0,
    "patch_mixer_mlp_ratio": 1.0,
    "use_bias": True,
    "num_experts": 8,
    "expert_capacity": 1,
    "experts_every_n": 2,
}
# The kwargs their MicroDiT_XL_2 factory passes (with np.linspace multipliers over depth).
OFFICIAL_XL_2_KWARGS: dict[str, Any] = {
    "dim": 1024,
    "depth": 28,
    "head_dim": 64,
    "patch_mixer_depth": 6,
    "patch_mixer_dim": 768,
    "qkv_multipliers": list(np.linspace(0.5, 1.0, 28)),
    "ffn_multipliers": list(np.linspace(0.5, 4.0, 28)),
    "patch_mixer_mlp_ratio": 4.0,
    "use_bias": False,
    "expert_capacity": 2.0,
    "caption_channels": 1024,
}
_DROPPED_KEYS = ("pos_embed", "mask_token")
_PREFIXES = ("_orig_mod.", "module.", "dit.")


def _ratio_range(name: str, values: Sequence[float], depth: int) -> tuple[bool, tuple[float, float]]:
    """Their per-block multiplier list -> (layerwise_scaling, (low, high))."""
    values = [float(v) for v in values]
    if len(values) == 1:
        return False, (values[0], values[0])
    if len(values) == depth and np.allclose(
        values, np.linspace(values[0], values[-1], depth), rtol=0, atol=1e-12
    ):
        return True, (values[0], values[-1])
    raise ConfigError(
        f"official kwarg {name}: only a single value or np.linspace over depth={depth} is supported"
    )


def config_from_official_kwargs(**kwargs: Any) -> ModelConfig:
    """Translate their ``DiT(**kwargs)`` into our ``ModelConfig`` (unknown kwargs are an error)."""
    unknown = sorted(set(kwargs) - set(OFFICIAL_DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown official DiT kwarg(s) {unknown}; known: {sorted(OFFICIAL_DEFAULTS)}")
    kw = {**OFFICIAL_DEFAULTS, **kwargs}
    if int(kw["input_size"]) % int(kw["patch_size"]):
        raise ConfigError(f"official kwarg input_size={kw['input_size']} is not divisible by patch_size")
    layerwise_qkv, qkv_range = _ratio_range("qkv_multipliers", kw["qkv_multipliers"], kw["depth"])
    layerwise_ffn, ffn_range = _ratio_range("ffn_multipliers", kw["ffn_multipliers"], kw["depth"])
    if layerwise_qkv != layerwise_ffn:
        raise ConfigError(
            "official kwargs: qkv_multipliers and ffn_multipliers must both be per-block or both single"
        )
    mixer = bool(kw["use_patch_mixer"]) and int(kw["patch_mixer_depth"]) > 0
    return ModelConfig(
        width=int(kw["dim"]),
        depth=int(kw["depth"]),
        head_dim=int(kw["head_dim"]),
        multiple_of=int(kw["multiple_of"]),
        patch_size=int(kw["patch_size"]),
        latent_channels=int(kw["in_channels"]),
        caption_dim=int(kw["caption_channels"]),
        pos_interp_scale=float(kw["pos_interp_scale"]),
        norm_eps=float(kw["norm_eps"]),
        use_bias=bool(kw["use_bias"]),
        depth_init=bool(kw["depth_init"]),
        mixer_depth=int(kw["patch_mixer_depth"]) if mixer else 0,
        mixer_width=int(kw["patch_mixer_dim"]),
        mixer_qkv_ratio=float(kw["patch_mixer_qkv_ratio"]),
        mixer_ffn_ratio=float(kw["patch_mixer_mlp_ratio"]),
        masking="deferred" if mixer else "none",
        mask_ratio=0.75 if mixer else 0.0,
        num_experts=int(kw["num_experts"]),
        expert_capacity=float(kw["expert_capacity"]),
        experts_every_n=int(kw["experts_every_n"]),
        layerwise_scaling=layerwise_qkv,
        qkv_ratio_range=qkv_range,
        ffn_ratio_range=ffn_range,
    )


def convert_official_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip wrapper prefixes and drop the buffers we recompute; names are otherwise identical."""
    if "state_dict" in state_dict and isinstance(state_dict["state_dict"], Mapping):
        state_dict = state_dict["state_dict"]
    converted = {}
    for key, value in state_dict.items():
        for prefix in _PREFIXES:
            while key.startswith(prefix):
                key = key[len(prefix) :]
        if key not in _DROPPED_KEYS:
            converted[key] = value
    return converted


def load_official_checkpoint(state_dict: Mapping[str, torch.Tensor] | str, **dit_kwargs: Any) -> MicroDiT:
    """Build our MicroDiT from one of their state dicts (or a path to it) and their ``DiT`` kwargs.

    Their forward takes y shaped (N, 1, L, Dy); ours takes (N, L, Dy): call ours with
    ``y.squeeze(1)``. Outputs are identical for the same inputs (tests/model/test_official.py).
    """
    if isinstance(state_dict, str):
        state_dict = torch.load(state_dict, map_location="cpu", weights_only=True)
    config = config_from_official_kwargs(**dit_kwargs)
    model = MicroDiT(config)
    converted = convert_official_state_dict(state_dict)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(converted))
    unexpected = sorted(set(converted) - set(expected))
    if missing or unexpected:
        raise ConfigError(
            f"checkpoint does not match the DiT kwargs given: missing {missing[:5]}{'…' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'…' if len(unexpected) > 5 else ''} (check dim/depth/patch_mixer_*/num_experts)"
        )
    for key, value in converted.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise ConfigError(
                f"checkpoint tensor {key} has shape {tuple(value.shape)}, the kwargs give "
                f"{tuple(expected[key].shape)}: check dim/head_dim/multipliers/in_channels"
            )
    model.load_state_dict(converted, strict=True)
    return model
