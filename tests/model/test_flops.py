"""The analytic FLOP count against torch.utils.flop_counter.FlopCounterMode.

On CPU the counter does not see inside the fused SDPA kernel, so forwards run with the MATH
backend, whose matmuls it counts; the analytic count then matches (asserted within 5%).
"""

from __future__ import annotations

import functools

import pytest
import torch
from model_testing import nano, randomised
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from microdit.model.flops import forward_flops, train_flops_per_image
from microdit.model.sizes import model_config

CONFIGS = {
    "nano_deferred": nano(),
    "nano_dense_twin": nano(dense_twin=True),
    "narrow_mixer_4ch_1024cap": nano(mixer_width=96, latent_channels=4, caption_dim=1024),
    "naive_no_mixer": nano(masking="naive", mixer_depth=0),
    "no_layerwise_bias_e8": nano(layerwise_scaling=False, use_bias=True, num_experts=8, experts_every_n=1),
}


@functools.cache
def _model(name: str):
    return randomised(CONFIGS[name])


def _measured(name: str, latent: int, ratio: float, caption_len: int) -> int:
    config, model = CONFIGS[name], _model(name)
    x = torch.randn(1, config.latent_channels, latent, latent)
    y = torch.randn(1, caption_len, config.caption_dim)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
        model(x, torch.zeros(1), y, mask_ratio=ratio, generator=torch.Generator().manual_seed(0))
    return counter.get_total_flops()


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("latent,ratio", [(16, 0.0), (32, 0.0), (32, 0.5), (32, 0.75)])
def test_analytic_flops_match_the_flop_counter(name, latent, ratio):
    config = CONFIGS[name]
    measured = _measured(name, latent, ratio, caption_len=20)
    analytic = forward_flops(config, latent, ratio, caption_len=20).forward
    assert analytic == pytest.approx(measured, rel=0.05)


def test_training_is_three_forwards_and_masking_saves_backbone_compute():
    cfg = model_config("MicroDiT_XL_2")
    full, masked = forward_flops(cfg, 32, 0.0), forward_flops(cfg, 32, 0.75)
    assert train_flops_per_image(cfg, 32, 0.75) == pytest.approx(3 * masked.forward)
    assert masked.embed == full.embed
    # the mixer sees all 256 patches; only its output map 768 -> 1024 runs after the drop (64 kept)
    assert full.mixer - masked.mixer == 2 * (256 - 64) * 768 * 1024
    # 64 of 256 tokens; the caption kv projections and adaLN do not shrink with the tokens
    assert 0.25 < masked.backbone / full.backbone < 0.3
    assert full.forward > masked.forward > 0.25 * full.forward
    naive = model_config("MicroDiT_XL_2", masking="naive", mixer_depth=0)
    assert forward_flops(naive, 32, 0.75).mixer == 0


def test_mask_ratio_is_ignored_without_masking():
    cfg = nano(masking="none", mask_ratio=0.0, mixer_depth=0)
    assert forward_flops(cfg, 32, 0.75).forward == forward_flops(cfg, 32, 0.0).forward
