"""Output shapes for 32x32 and 64x64 latents, several channel counts and caption widths."""

from __future__ import annotations

import pytest
import torch
from model_testing import inputs, nano, randomised

CASES = [  # (latent side, latent channels, caption width)
    (32, 3, 384),
    (32, 4, 1024),
    (32, 16, 384),
    (64, 4, 384),
    (64, 16, 1024),
    (64, 3, 1024),
]


@pytest.mark.parametrize("latent,channels,caption", CASES)
def test_unmasked_shapes(latent, channels, caption):
    cfg = nano(latent_channels=channels, caption_dim=caption)
    model = randomised(cfg)
    x, c_noise, y = inputs(cfg, n=2, latent=latent, caption_len=7)
    with torch.no_grad():
        out = model(x, c_noise, y)
    assert out.sample.shape == (2, channels, latent, latent)
    assert out.mask is None and out.keep_idx is None
    assert out.patch_size == 2
    assert torch.isfinite(out.sample).all()
    assert set(out.router_stats) >= {"router/unrouted_frac", "router/experts_per_token", "router/load_e0"}


@pytest.mark.parametrize("latent,channels,caption", CASES[:2] + CASES[3:5])
@pytest.mark.parametrize("masking", ["deferred", "naive"])
def test_masked_shapes(latent, channels, caption, masking):
    overrides = {"mixer_depth": 0} if masking == "naive" else {}
    cfg = nano(latent_channels=channels, caption_dim=caption, masking=masking, **overrides)
    model = randomised(cfg)
    x, c_noise, y = inputs(cfg, n=3, latent=latent, caption_len=5)
    tokens = (latent // 2) ** 2  # 256 or 1024
    with torch.no_grad():
        out = model(x, c_noise, y, mask_ratio=0.75, generator=torch.Generator().manual_seed(0))
    kept = tokens // 4
    assert out.sample.shape == (3, channels, latent, latent)
    assert out.mask.shape == (3, tokens)
    assert out.keep_idx.shape == (3, kept)
    assert out.mask.sum(dim=1).tolist() == [tokens - kept] * 3  # 1 = dropped


def test_dense_twin_and_unmasked_strategy_shapes():
    for cfg in (
        nano(dense_twin=True, latent_channels=4),
        nano(masking="none", mask_ratio=0.0, mixer_depth=0, num_experts=0, latent_channels=4),
        nano(layerwise_scaling=False, use_bias=True, mixer_width=96, latent_channels=4),
    ):
        model = randomised(cfg)
        x, c_noise, y = inputs(cfg, n=2, latent=32)
        with torch.no_grad():
            out = model(x, c_noise, y)
        assert out.sample.shape == (2, 4, 32, 32)
        assert torch.isfinite(out.sample).all()
    assert out.router_stats  # the last one still has MoE


def test_dense_model_reports_no_router_stats():
    cfg = nano(num_experts=0, latent_channels=4)
    out = randomised(cfg)(*inputs(cfg, n=1, latent=32))
    assert out.router_stats == {}


def test_non_square_latent():
    cfg = nano(latent_channels=4)
    model = randomised(cfg)
    x = torch.randn(2, 4, 32, 48)
    _, c_noise, y = inputs(cfg)
    with torch.no_grad():
        out = model(x, c_noise, y, mask_ratio=0.5, generator=torch.Generator().manual_seed(0))
    assert out.sample.shape == (2, 4, 32, 48)
    assert out.mask.shape == (2, 16 * 24)
    assert out.keep_idx.shape == (2, 16 * 24 // 2)


def test_unpatchify_inverts_the_patch_order():
    """Token t of patch (row, col) lands at pixels [2 row : 2 row + 2, 2 col : 2 col + 2]."""
    cfg = nano(latent_channels=4)
    model = randomised(cfg)
    gh, gw, p, c = 4, 6, 2, 4
    tokens = torch.arange(gh * gw * p * p * c, dtype=torch.float32).reshape(1, gh * gw, p * p * c)
    img = model.unpatchify(tokens, gh, gw)  # (1, C, 8, 12)
    # the same layout the patch conv reads: (row, col) tokens, features ordered (p, q, c)
    ref = tokens.reshape(1, gh, gw, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(1, c, gh * p, gw * p)
    assert torch.equal(img, ref)
