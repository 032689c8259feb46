"""The paper's initialisation (zero output, gradients still flow) and a bf16 autocast forward."""

from __future__ import annotations

import torch
from model_testing import inputs, nano, randomised

from microdit.diffusion import EDMDenoiser, edm_loss
from microdit.model import MicroDiT


def test_untrained_model_outputs_exact_zeros():
    for cfg in (nano(latent_channels=4), nano(masking="naive", mixer_depth=0), nano(dense_twin=True)):
        torch.manual_seed(0)
        model = MicroDiT(cfg)
        x, c_noise, y = inputs(cfg, n=2, latent=16)
        with torch.no_grad():
            for ratio in (0.0, 0.5):
                out = model(x, c_noise, y, mask_ratio=ratio, generator=torch.Generator().manual_seed(0))
                assert torch.equal(out.sample, torch.zeros_like(out.sample))


def test_zero_init_layers_and_caption_block_identity():
    torch.manual_seed(0)
    model = MicroDiT(nano())
    assert model.final_layer.linear.weight.abs().sum() == 0
    assert model.final_layer.adaLN_modulation[1].weight.abs().sum() == 0
    for block in [*model.blocks, *model.patch_mixer]:
        assert block.adaLN_modulation[1].weight.abs().sum() == 0
        assert block.attn.qkv.weight.std().item() < 0.025  # trunc-normal 0.02
    std = [model.blocks[i].attn.proj.weight.std().item() for i in (0, 3)]
    assert abs(std[0] - 0.02 / 2**0.5) < 0.002 and abs(std[1] - 0.02 / 8**0.5) < 0.001  # 0.02/sqrt(2(i+1))
    y = torch.randn(2, 5, 128)
    assert torch.equal(model.y_emb_preprocess(y), y)  # outputs zero-initialised: identity


def test_gradients_flow_from_a_zero_initialised_model():
    cfg = nano(latent_channels=4)
    torch.manual_seed(0)
    model = MicroDiT(cfg)
    denoiser = EDMDenoiser(model)
    x0, _, y = inputs(cfg, n=2, latent=16)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def step():
        opt.zero_grad()
        gen = torch.Generator().manual_seed(0)
        edm_loss(denoiser, x0, y, p_mean=-0.6, p_std=1.2, mask_ratio=0.5, generator=gen).loss.backward()

    step()
    assert model.final_layer.linear.weight.grad.abs().sum() > 0
    assert model.final_layer.linear.bias.grad.abs().sum() > 0
    opt.step()
    step()  # once the output layer is non-zero, the adaLN gates receive gradient too
    assert model.final_layer.adaLN_modulation[1].weight.grad.abs().sum() > 0
    assert model.blocks[0].adaLN_modulation[1].weight.grad.abs().sum() > 0
    assert model.patch_mixer[0].adaLN_modulation[1].weight.grad.abs().sum() > 0


def test_bf16_autocast_forward_and_backward_on_cpu():
    cfg = nano(latent_channels=4)
    model = randomised(cfg)
    x, c_noise, y = inputs(cfg, n=2, latent=16)
    with torch.no_grad():
        ref = model(x, c_noise, y).sample
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, c_noise, y, mask_ratio=0.5, generator=torch.Generator().manual_seed(0))
        full = model(x, c_noise, y)
    assert out.sample.shape == (2, 4, 16, 16) and torch.isfinite(out.sample).all()
    assert full.sample.dtype == torch.bfloat16
    rel = (full.sample.float() - ref).norm() / ref.norm()
    assert rel < 0.05
    out.sample.float().square().mean().backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
    assert model.blocks[1].mlp.w1.grad.abs().sum() > 0  # MoE experts get gradient under autocast
