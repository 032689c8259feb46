"""Patch masking: how many tokens reach the backbone, where the drop happens (naive vs deferred),
the zero gradient of dropped patches through the EDM loss, and reproducible masks."""

from __future__ import annotations

import pytest
import torch
from model_testing import Capture, inputs, nano, randomised

from microdit.diffusion import EDMDenoiser, edm_loss
from microdit.model import MicroDiT
from microdit.model.masking import gather_tokens, random_keep_indices

DEFERRED = nano(latent_channels=4)  # mixer 2 x 128 at the backbone width: no width maps
NARROW = nano(latent_channels=4, mixer_width=96)  # mixer narrower: width maps in and out
NAIVE = nano(latent_channels=4, masking="naive", mixer_depth=0)
# 32x32 latent, p = 2 -> T = 256 tokens: floor(256 (1 - r))
KEPT = {0.0: 256, 0.3: 179, 0.5: 128, 0.6: 102, 0.75: 64, 0.9: 25}


@pytest.mark.parametrize("config", [DEFERRED, NAIVE], ids=["deferred", "naive"])
def test_exactly_floor_t_times_one_minus_r_tokens_reach_the_backbone(config):
    model = randomised(config)
    x, c_noise, y = inputs(config, n=2, latent=32)
    first = Capture(model.blocks[0])
    mixer = Capture(model.patch_mixer[0]) if config.use_mixer else None
    with torch.no_grad():
        for ratio, kept in KEPT.items():
            out = model(x, c_noise, y, mask_ratio=ratio, generator=torch.Generator().manual_seed(1))
            assert first.inputs[-1].shape == (2, kept, 128)
            assert config.kept_tokens(32, ratio) == kept
            if ratio > 0:
                assert out.keep_idx.shape == (2, kept)
                assert all(row.unique().numel() == kept for row in out.keep_idx)  # distinct tokens
                assert (out.mask == 0).sum(dim=1).tolist() == [kept, kept]
            if mixer is not None:
                assert mixer.inputs[-1].shape == (2, 256, 128)  # the mixer always sees all patches
    assert len(first.inputs) == len(KEPT)


def test_naive_drops_right_after_the_position_embedding():
    model = randomised(NAIVE)
    x, c_noise, y = inputs(NAIVE, n=2, latent=32)
    embed, first = Capture(model.x_embedder), Capture(model.blocks[0])
    with torch.no_grad():
        out = model(x, c_noise, y, mask_ratio=0.75, generator=torch.Generator().manual_seed(2))
    embedded = embed.outputs[0] + model.positions(16, 16)  # (N, T, D)
    assert torch.equal(first.inputs[0], gather_tokens(embedded, out.keep_idx))  # (N, K, D)


@pytest.mark.parametrize("config", [DEFERRED, NARROW], ids=["same_width", "narrow_mixer"])
def test_deferred_drops_after_the_mixer(config):
    model = randomised(config)
    x, c_noise, y = inputs(config, n=2, latent=32)
    embed, first = Capture(model.x_embedder), Capture(model.blocks[0])
    mix_in, mix_out = Capture(model.patch_mixer[0]), Capture(model.patch_mixer[-1])
    with torch.no_grad():
        out = model(x, c_noise, y, mask_ratio=0.75, generator=torch.Generator().manual_seed(2))
        embedded = embed.outputs[0] + model.positions(16, 16)  # (N, T, D)
        if config.mixer_width != config.width:
            embedded = model.patch_mixer_map_xin(embedded)
        assert torch.equal(mix_in.inputs[0], embedded)  # nothing dropped before the mixer
        assert mix_out.outputs[0].shape == (2, 256, config.mixer_width)
        kept = gather_tokens(mix_out.outputs[0], out.keep_idx)  # (N, K, Dm)
        if config.mixer_width != config.width:
            kept = model.patch_mixer_map_xout(kept)  # applied after the drop
        assert torch.allclose(first.inputs[0], kept, atol=1e-6, rtol=0)


def test_naive_and_deferred_differ_only_in_where_the_drop_happens():
    """With an identity mixer, deferred masking computes exactly what naive masking does."""
    deferred = randomised(DEFERRED)
    with torch.no_grad():
        for block in deferred.patch_mixer:  # self-attn and FFN are gated, cross-attn is not
            block.adaLN_modulation[1].weight.zero_()
            block.adaLN_modulation[1].bias.zero_()
            block.cross_attn.proj.weight.zero_()
    naive = MicroDiT(NAIVE)
    naive.load_state_dict({k: v for k, v in deferred.state_dict().items() if not k.startswith("patch_mixer")})
    x, c_noise, y = inputs(DEFERRED, n=2, latent=32)
    keep_idx = random_keep_indices(2, 256, 0.75, torch.Generator().manual_seed(3))
    with torch.no_grad():
        a = deferred(x, c_noise, y, keep_idx=keep_idx).sample
        b = naive(x, c_noise, y, keep_idx=keep_idx).sample
        assert a.abs().max() > 0.01
        assert torch.allclose(a, b, atol=1e-6, rtol=0)
        mixing = randomised(DEFERRED)(x, c_noise, y, keep_idx=keep_idx).sample  # a real mixer
    assert (mixing - b).abs().max() > 1e-3


def test_dropped_patches_are_zero_and_their_loss_gradient_is_zero():
    model = randomised(DEFERRED)
    captured = {}

    def net(x, c_noise, y, **kwargs):
        out = model(x, c_noise, y, **kwargs)
        out.sample.retain_grad()
        captured["out"] = out
        return out

    x0, _, y = inputs(DEFERRED, n=2, latent=32)
    keep_idx = random_keep_indices(2, 256, 0.75, torch.Generator().manual_seed(4))
    result = edm_loss(
        EDMDenoiser(net), x0, y, p_mean=-0.6, p_std=1.2, keep_idx=keep_idx, generator=torch.Generator()
    )
    result.loss.backward()
    out = captured["out"]
    dropped = out.mask.reshape(2, 1, 16, 1, 16, 1).expand(2, 4, 16, 2, 16, 2).reshape(2, 4, 32, 32) > 0.5
    assert dropped.float().mean().item() == 0.75
    assert torch.equal(out.sample[dropped], torch.zeros(int(dropped.sum())))  # zero refill
    grad = out.sample.grad
    assert torch.equal(grad[dropped], torch.zeros(int(dropped.sum())))  # exactly zero
    assert (grad[~dropped] != 0).float().mean().item() > 0.99  # kept patches all carry gradient
    assert model.final_layer.linear.weight.grad.abs().sum() > 0


def test_same_generator_same_output_different_seed_different_mask():
    model = randomised(DEFERRED)
    x, c_noise, y = inputs(DEFERRED, n=4, latent=32)
    with torch.no_grad():
        a = model(x, c_noise, y, mask_ratio=0.5, generator=torch.Generator().manual_seed(7))
        b = model(x, c_noise, y, mask_ratio=0.5, generator=torch.Generator().manual_seed(7))
        c = model(x, c_noise, y, mask_ratio=0.5, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a.keep_idx, b.keep_idx) and torch.equal(a.mask, b.mask)
    assert torch.equal(a.sample, b.sample)
    assert not torch.equal(a.keep_idx, c.keep_idx)
    assert (a.mask != c.mask).any(dim=1).all()  # every sample's mask differs
    assert not torch.equal(a.sample, c.sample)
    # masks differ across samples of one batch too
    assert not torch.equal(a.mask[0], a.mask[1])


def test_keep_indices_override_the_random_draw():
    model = randomised(DEFERRED)
    x, c_noise, y = inputs(DEFERRED, n=2, latent=32)
    keep_idx = torch.stack([torch.arange(0, 256, 4), torch.arange(1, 256, 4)])  # (2, 64)
    with torch.no_grad():
        out = model(
            x, c_noise, y, mask_ratio=0.5, generator=torch.Generator().manual_seed(0), keep_idx=keep_idx
        )
    assert torch.equal(out.keep_idx, keep_idx)
    assert out.mask[0, 0] == 0 and out.mask[0, 1] == 1 and out.mask[1, 1] == 0


def test_random_keep_indices_are_a_uniform_subset():
    idx = random_keep_indices(2000, 16, 0.75, torch.Generator().manual_seed(0))  # (2000, 4)
    assert idx.shape == (2000, 4)
    assert (idx[:, 1:] > idx[:, :-1]).all()  # sorted, distinct
    counts = torch.bincount(idx.reshape(-1), minlength=16).float() / 2000  # P(kept) = 0.25 each
    assert (counts - 0.25).abs().max() < 0.04


def test_masking_none_rejects_a_mask_ratio():
    cfg = nano(masking="none", mask_ratio=0.0, mixer_depth=0, latent_channels=4)
    model = randomised(cfg)
    with pytest.raises(ValueError, match="masking='none'"):
        model(*inputs(cfg, n=1, latent=16), mask_ratio=0.5)
