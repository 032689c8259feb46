"""Official-checkpoint equivalence: a state dict of the authors' ``DiT`` loads into our model and
gives the same outputs (max abs diff < 1e-5 in fp32), unmasked and with the same kept patches.

The authors' network is re-implemented independently in ``official_reference.py`` (their module
names, buffers and forward), randomly initialised everywhere so every path is non-trivial.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from model_testing import cuda_autocast_policy
from official_reference import RefDiT

from microdit.errors import ConfigError
from microdit.model.official import (
    OFFICIAL_XL_2_KWARGS,
    RELEASED_CHECKPOINTS,
    config_from_official_kwargs,
    load_official_checkpoint,
)
from microdit.model.sizes import model_config, parameter_counts

DEPTH = 4
# Mixer narrower than the backbone (so the three width maps exist), 96 = 3 heads of 32: its
# attention width is exactly 96 (ratio 1), not rounded up to a multiple of 2*head_dim.
NARROW_MIXER = dict(
    input_size=16,
    patch_size=2,
    in_channels=4,
    dim=128,
    depth=DEPTH,
    head_dim=32,
    multiple_of=32,
    caption_channels=64,
    pos_interp_scale=1.0,
    qkv_multipliers=list(np.linspace(0.5, 1.0, DEPTH)),
    ffn_multipliers=list(np.linspace(0.5, 4.0, DEPTH)),
    use_patch_mixer=True,
    patch_mixer_depth=2,
    patch_mixer_dim=96,
    patch_mixer_qkv_ratio=1.0,
    patch_mixer_mlp_ratio=4.0,
    use_bias=False,
    num_experts=4,
    expert_capacity=2.0,
    experts_every_n=2,
)
# Biases everywhere they can be, mixer at the backbone width (identity maps), 512 px-style scale.
BIASED_SAME_WIDTH = {
    **NARROW_MIXER,
    "use_bias": True,
    "patch_mixer_dim": 128,
    "pos_interp_scale": 2.0,
    "multiple_of": 64,
}
VARIANTS = {"narrow_mixer_no_bias": NARROW_MIXER, "same_width_bias": BIASED_SAME_WIDTH}


def _reference(kwargs: dict) -> RefDiT:
    torch.manual_seed(0)
    ref = RefDiT(**kwargs)
    with torch.no_grad():
        for param in ref.parameters():
            param.normal_(0.0, 0.1)
    return ref.eval()


def _inputs(kwargs: dict, n: int = 2, length: int = 8):
    gen = torch.Generator().manual_seed(1)
    s, c = kwargs["input_size"], kwargs["in_channels"]
    x = torch.randn(n, c, s, s, generator=gen)
    t = torch.randn(n, generator=gen)  # c_noise = ln(sigma) / 4
    y = torch.randn(n, 1, length, kwargs["caption_channels"], generator=gen)  # their (N, 1, L, Dy)
    return x, t, y


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_state_dict_names_and_shapes_match(variant):
    kwargs = VARIANTS[variant]
    ref = _reference(kwargs)
    ours = load_official_checkpoint(ref.state_dict(), **kwargs)
    theirs = {k: tuple(v.shape) for k, v in ref.state_dict().items() if k not in ("pos_embed", "mask_token")}
    assert theirs == {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert sum(p.numel() for p in ref.parameters()) == sum(p.numel() for p in ours.parameters())
    # their persistent pos_embed buffer equals the table we recompute
    grid = kwargs["input_size"] // kwargs["patch_size"]
    ours_table = ours.positions(grid, grid)
    assert torch.equal(ours_table, ref.pos_embed) and ours_table.dtype == torch.float32
    assert dict(ours.named_buffers())["pos_embed"] is ours_table  # kept as a buffer, not a dict cache
    assert "pos_embed" not in ours.state_dict()  # recomputed, never saved: checkpoints stay as they were


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_unmasked_outputs_match(variant):
    kwargs = VARIANTS[variant]
    ref = _reference(kwargs)
    ours = load_official_checkpoint(ref.state_dict(), **kwargs).eval()
    x, t, y = _inputs(kwargs)
    with torch.no_grad():
        expected = ref(x, t, y)
        got = ours(x, t, y.squeeze(1))
    assert expected["mask"] is None and got.mask is None
    assert expected["sample"].abs().max() > 0.5  # non-trivial output
    assert (got.sample - expected["sample"]).abs().max().item() < 1e-5


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("mask_ratio", [0.5, 0.75])
def test_masked_outputs_match_with_the_same_kept_patches(variant, mask_ratio):
    kwargs = VARIANTS[variant]
    ref = _reference(kwargs)
    ours = load_official_checkpoint(ref.state_dict(), **kwargs).eval()
    x, t, y = _inputs(kwargs)
    torch.manual_seed(123)  # their mask comes from the global RNG
    with torch.no_grad():
        expected = ref(x, t, y, mask_ratio=mask_ratio)
        keep_idx = ref.last_ids_keep
        got = ours(x, t, y.squeeze(1), keep_idx=keep_idx)
    tokens = (kwargs["input_size"] // kwargs["patch_size"]) ** 2
    assert keep_idx.shape == (2, int(tokens * (1 - mask_ratio)))
    assert torch.equal(got.mask, expected["mask"])
    assert expected["sample"].abs().max() > 0.5
    assert (got.sample - expected["sample"]).abs().max().item() < 1e-5


def _stream_dtypes(model: torch.nn.Module) -> tuple[dict[str, list[torch.dtype]], list]:
    """Records the dtype of the residual stream entering and leaving every mixer and backbone block."""
    seen: dict[str, list[torch.dtype]] = {"mixer in": [], "mixer out": [], "blocks in": [], "blocks out": []}

    def hooks(name: str, block: torch.nn.Module) -> list:
        out = block.register_forward_hook(lambda _m, _a, o: seen[f"{name} out"].append(
            (o[0] if isinstance(o, tuple) else o).dtype))
        return [block.register_forward_pre_hook(lambda _m, a: seen[f"{name} in"].append(a[0].dtype)), out]

    handles = [h for name in ("mixer", "blocks")
               for block in getattr(model, "patch_mixer" if name == "mixer" else "blocks") for h in hooks(name, block)]
    return seen, handles


@pytest.mark.parametrize("policy", ["cpu", "cuda"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_residual_stream_dtypes_under_autocast_match_the_official_module(variant, policy):
    """Under bf16 autocast (CPU's policy, and CUDA's emulated: fp32 LayerNorm) every block sees and
    returns the residual stream in the official module's dtype: fp32 from the position buffer on
    (their ``x_embedder(x) + pos_embed`` promotes the bf16 patches), bf16 after a width map's linear."""
    kwargs = VARIANTS[variant]
    ref = _reference(kwargs)
    ours = load_official_checkpoint(ref.state_dict(), **kwargs).eval()
    x, t, y = _inputs(kwargs)
    theirs, their_hooks = _stream_dtypes(ref)
    mine, my_hooks = _stream_dtypes(ours)
    policy_context = cuda_autocast_policy() if policy == "cuda" else contextlib.nullcontext()
    with policy_context, torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = ref(x, t, y)["sample"]
        got = ours(x, t, y.squeeze(1)).sample
    for handle in their_hooks + my_hooks:
        handle.remove()
    assert mine == theirs
    assert got.dtype == expected.dtype
    width_map = kwargs["patch_mixer_dim"] != kwargs["dim"]
    # the embedded tokens are fp32 on both: the mixer stream too without a width map, bf16 after one
    assert set(theirs["mixer in"]) == {torch.bfloat16 if width_map else torch.float32}
    if not width_map:
        assert set(theirs["blocks out"]) == {torch.float32}


def test_mismatched_state_dict_raises_config_error_naming_the_problem():
    ref = _reference(NARROW_MIXER)
    state = ref.state_dict()
    wrong_depth = {**NARROW_MIXER, "depth": 3, "qkv_multipliers": [1.0], "ffn_multipliers": [4.0]}
    with pytest.raises(ConfigError, match=r"unexpected \['blocks\.3\."):
        load_official_checkpoint(state, **wrong_depth)
    with pytest.raises(ConfigError, match=r"x_embedder\.proj\.weight has shape \(128, 4, 2, 2\)"):
        load_official_checkpoint(state, **{**NARROW_MIXER, "in_channels": 16})
    missing = {k: v for k, v in state.items() if not k.startswith("final_layer.linear")}
    with pytest.raises(ConfigError, match=r"missing \['final_layer\.linear\.bias'"):
        load_official_checkpoint(missing, **NARROW_MIXER)
    with pytest.raises(ConfigError, match="unknown official DiT kwarg"):
        load_official_checkpoint(state, **NARROW_MIXER, mlp_ratio=4.0)


def test_wrapper_prefixes_are_stripped():
    ref = _reference(BIASED_SAME_WIDTH)
    wrapped = {f"module.dit.{k}": v for k, v in ref.state_dict().items()}
    ours = load_official_checkpoint(wrapped, **BIASED_SAME_WIDTH)
    assert torch.equal(ours.final_layer.linear.weight, ref.final_layer.linear.weight)


def test_official_xl_kwargs_give_the_released_parameter_count():
    kwargs = {**OFFICIAL_XL_2_KWARGS, "input_size": 64, "pos_interp_scale": 2}
    config = config_from_official_kwargs(**kwargs)
    assert parameter_counts(config)["total"] == 1_165_442_320
    assert config == model_config("MicroDiT_XL_2", pos_interp_scale=2.0, mask_ratio=0.75)
    assert len(RELEASED_CHECKPOINTS) == 4


def test_official_xl_reference_tree_has_the_released_parameter_count():
    """Our independent re-implementation of their tree agrees on XL's count (meta device)."""
    kwargs = {**OFFICIAL_XL_2_KWARGS, "input_size": 64, "pos_interp_scale": 2}
    with torch.device("meta"):
        ref = RefDiT(**kwargs)
    assert sum(p.numel() for p in ref.parameters()) == 1_165_442_320
