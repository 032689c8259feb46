"""EDM objective, masked loss, CFG and samplers (SPEC §2), checked against closed-form values."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from microdit.diffusion import (
    EDMDenoiser,
    caption_dropout,
    edm_coefficients,
    edm_loss,
    edm_loss_weight,
    edm_sample,
    guided_denoise,
    initial_noise,
    karras_sigmas,
    sample,
    sample_sigma,
)
from microdit.model.output import MicroDiTOutput

SD = 0.9


class FixedNet(nn.Module):
    """Fake MicroDiT: returns a learnable prediction F (N, C, H, W) and a given mask; logs calls."""

    def __init__(self, pred, mask=None, p=2):
        super().__init__()
        self.pred, self.mask, self.p, self.calls = nn.Parameter(pred.clone()), mask, p, []

    def forward(self, x, c_noise, y, mask_ratio=0.0, generator=None, keep_idx=None):
        self.calls.append((x, c_noise, y, mask_ratio))
        return MicroDiTOutput(self.pred, self.mask, keep_idx, self.p)


class CondNet(nn.Module):
    """F = 0.5·x_in + mean(y)·(1 + c_noise): depends on x, σ and the caption; logs batch sizes."""

    def __init__(self):
        super().__init__()
        self.w, self.batches = nn.Parameter(torch.tensor(0.5)), []

    def forward(self, x, c_noise, y, mask_ratio=0.0, generator=None, keep_idx=None):
        self.batches.append(x.shape[0])
        cond = (y.mean(dim=(1, 2)) * (1 + c_noise)).view(-1, 1, 1, 1)  # (N, 1, 1, 1)
        return MicroDiTOutput(self.w * x + cond, None, None, 2)


def patches_to_pixels(v, p=2):
    """(N, h, w) per-patch values → (N, h·p, w·p) constant within each patch."""
    return v.repeat_interleave(p, dim=1).repeat_interleave(p, dim=2)


def test_preconditioning_matches_formulas():
    for s in (0.002, 0.5, 0.9, 3.0, 80.0):
        c_in, c_skip, c_out, c_noise = (float(c) for c in edm_coefficients(torch.tensor(s), SD))
        assert c_in == pytest.approx(1 / math.sqrt(s**2 + SD**2), rel=1e-6)
        assert c_skip == pytest.approx(SD**2 / (s**2 + SD**2), rel=1e-6)
        assert c_out == pytest.approx(s * SD / math.sqrt(s**2 + SD**2), rel=1e-6)
        assert c_noise == pytest.approx(math.log(s) / 4, rel=1e-6)
        assert float(edm_loss_weight(torch.tensor(s), SD)) * c_out**2 == pytest.approx(1.0, rel=1e-5)
    assert float(edm_coefficients(torch.tensor(SD), SD)[1]) == pytest.approx(0.5)  # c_skip(σ_d) = ½
    assert float(edm_loss_weight(torch.tensor(SD), SD)) == pytest.approx(2 / SD**2, rel=1e-6)
    assert float(edm_loss_weight(torch.tensor(1.0), SD)) == pytest.approx(1.81 / 0.81, rel=1e-6)


def test_denoiser_feeds_net_and_combines():
    g = torch.Generator().manual_seed(0)
    x, f = torch.randn(3, 4, 4, 4, generator=g), torch.randn(3, 4, 4, 4, generator=g)
    sigma = torch.tensor([0.1, 1.0, 20.0])
    net = FixedNet(f)
    den, out = EDMDenoiser(net, SD)(x, sigma, torch.zeros(3, 2, 8))
    c_in, c_skip, c_out, c_noise = (c.view(-1, 1, 1, 1) for c in edm_coefficients(sigma, SD))
    assert torch.allclose(net.calls[0][0], c_in * x) and torch.allclose(net.calls[0][1], c_noise.view(-1))
    assert torch.allclose(den, c_skip * x + c_out * f, atol=1e-6) and out.sample is net.pred
    den0, _ = EDMDenoiser(FixedNet(f), SD)(x, 1e-8, torch.zeros(3, 2, 8))  # scalar σ → 0: D → x
    assert (den0 - x).abs().max() < 1e-7


def test_sample_sigma_is_log_normal_and_seeded():
    s = sample_sigma(20000, -0.6, 1.2, generator=torch.Generator().manual_seed(0))
    assert s.shape == (20000,) and s.dtype == torch.float32 and (s > 0).all()
    assert abs(s.log().mean().item() + 0.6) < 0.03 and abs(s.log().std().item() - 1.2) < 0.03
    assert torch.equal(s, sample_sigma(20000, -0.6, 1.2, generator=torch.Generator().manual_seed(0)))


def test_unmasked_loss_known_values():
    x0, noise, y = torch.zeros(2, 4, 4, 4), torch.zeros(2, 4, 4, 4), torch.zeros(2, 3, 8)
    for sigma in (torch.tensor([0.5, 3.0]), torch.tensor([0.002, 80.0])):
        # x0 = n = 0 ⇒ D = c_out·F and λ·c_out² = 1 ⇒ loss = F² for a constant F.
        res = edm_loss(
            EDMDenoiser(FixedNet(torch.full_like(x0, 1.5))),
            x0,
            y,
            p_mean=0,
            p_std=1,
            sigma=sigma,
            noise=noise,
        )
        assert res.loss.item() == pytest.approx(2.25, rel=1e-5) and res.per_sample.shape == (2,)
    # F = 0, x0 = 1, n = 0, σ = 1: D = c_skip ⇒ λ(1 − c_skip)² = σ²/(σ_d²(σ²+σ_d²)) = 1/(0.81·1.81).
    res = edm_loss(EDMDenoiser(FixedNet(torch.zeros_like(x0))), torch.ones_like(x0), y, p_mean=0, p_std=1,
                   sigma=torch.ones(2), noise=noise)  # fmt: skip
    assert res.loss.item() == pytest.approx(1 / (0.81 * 1.81), rel=1e-5)


def test_perfect_prediction_gives_zero_loss():
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(4, 4, 8, 8, generator=g)

    class Oracle(nn.Module):
        def forward(self, x_in, c_noise, y, **kw):
            c_in, c_skip, c_out, _ = (
                c.view(-1, 1, 1, 1) for c in edm_coefficients(torch.exp(4 * c_noise), SD)
            )
            x_noisy = x_in / c_in
            return MicroDiTOutput((x0 - c_skip * x_noisy) / c_out, None, None, 2)

    res = edm_loss(EDMDenoiser(Oracle(), SD), x0, torch.zeros(4, 2, 8), p_mean=-0.6, p_std=1.2, generator=g)
    assert res.loss.item() < 1e-9


def test_masked_loss_hand_computed_and_dropped_patches_ignored():
    # 2 samples, 2 channels, 4×4 latent, p = 2 → T = 4 patches (row-major). x0 = n = 0 ⇒ loss = F².
    vals = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[2.0, 4.0], [6.0, 8.0]]])  # (N, 2, 2) per patch
    pred = torch.stack([patches_to_pixels(vals), torch.zeros(2, 4, 4)], dim=1)  # (N, 2, 4, 4)
    mask = torch.tensor([[0.0, 1.0, 0.0, 1.0], [1.0, 0.0, 0.0, 0.0]])  # (N, T), 1 = dropped
    net = FixedNet(pred, mask)
    kw = dict(p_mean=0, p_std=1, sigma=torch.tensor([0.7, 5.0]), noise=torch.zeros(2, 2, 4, 4))
    res = edm_loss(EDMDenoiser(net), torch.zeros(2, 2, 4, 4), torch.zeros(2, 3, 8), mask_ratio=0.5, **kw)
    # channel mean halves F²: sample 0 keeps patches 1, 3 → (0.5 + 4.5)/2; sample 1 keeps 4, 6, 8 → 58/3.
    assert res.per_sample.tolist() == pytest.approx([2.5, 58 / 3], rel=1e-5)
    assert res.loss.item() == pytest.approx((2.5 + 58 / 3) / 2, rel=1e-5) and net.calls[0][3] == 0.5
    res.loss.backward()
    dropped = patches_to_pixels(mask.view(2, 2, 2)).bool().unsqueeze(1).expand_as(pred)  # (N, C, H, W)
    assert (net.pred.grad[dropped] == 0).all() and (net.pred.grad[~dropped & (pred != 0)] != 0).all()
    with torch.no_grad():  # garbage (even inf) at dropped patches leaves the loss bit-identical
        net.pred[dropped] = torch.randn(int(dropped.sum())) * 1e3
        net.pred[0, 0, 0, 2] = float("inf")
    res2 = edm_loss(EDMDenoiser(net), torch.zeros(2, 2, 4, 4), torch.zeros(2, 3, 8), **kw)
    assert torch.equal(res2.loss, res.loss.detach())


def test_masked_loss_matches_loop_reference():
    g = torch.Generator().manual_seed(2)
    x0, f, noise = (torch.randn(3, 4, 8, 8, generator=g, dtype=torch.float64) for _ in range(3))
    mask = (torch.rand(3, 16, generator=g) < 0.75).double()
    mask[:, 0] = 0  # at least one kept patch per sample
    sigma = torch.tensor([0.05, 1.0, 12.0], dtype=torch.float64)
    res = edm_loss(EDMDenoiser(FixedNet(f, mask)), x0, None, p_mean=0, p_std=1, sigma=sigma, noise=noise)
    total = 0.0
    for n in range(3):
        s = sigma[n].item()
        var = s * s + SD * SD  # the net ignores its input, so only c_skip and c_out matter
        d = SD * SD / var * (x0[n] + s * noise[n]) + s * SD / math.sqrt(var) * f[n]  # D = c_skip·x + c_out·F
        err = var / (s * SD) ** 2 * (d - x0[n]) ** 2  # (C, H, W) λ(σ)·(D − x0)²
        kept = [err[:, 2 * (t // 4) : 2 * (t // 4) + 2, 2 * (t % 4) : 2 * (t % 4) + 2].mean().item()
                for t in range(16) if mask[n, t] == 0]  # fmt: skip
        total += sum(kept) / len(kept) / 3
    assert res.loss.item() == pytest.approx(total, rel=1e-5)


def test_bf16_autocast_loss_is_fp32():
    class ConvNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 1)

        def forward(self, x, c_noise, y, mask_ratio=0.0, generator=None, keep_idx=None):
            mask = torch.zeros(x.shape[0], 16)
            mask[:, ::2] = 1
            return MicroDiTOutput(self.conv(x), mask if mask_ratio > 0 else None, None, 2)

    net, x0 = ConvNet(), torch.randn(4, 4, 8, 8)
    for r in (0.0, 0.5):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            res = edm_loss(EDMDenoiser(net), x0, torch.zeros(4, 2, 8), p_mean=-0.6, p_std=1.2, mask_ratio=r,
                           generator=torch.Generator().manual_seed(0))  # fmt: skip
        assert res.output.sample.dtype == torch.bfloat16 and res.loss.dtype == torch.float32
        res.loss.backward()
        assert torch.isfinite(res.loss) and torch.isfinite(net.conv.weight.grad).all()


def test_caption_dropout_rate_and_exact_zeros():
    y = torch.rand(10000, 3, 5) + 0.5  # no row is zero before dropout
    out = caption_dropout(y, 0.1, generator=torch.Generator().manual_seed(0))
    dropped = (out == 0).all(dim=(1, 2))  # (N,)
    assert 0.08 <= dropped.float().mean().item() <= 0.12
    assert torch.equal(out[~dropped], y[~dropped]) and ((out == 0).any(dim=(1, 2)) == dropped).all()
    assert torch.equal(caption_dropout(y, 0.0), y) and (caption_dropout(y, 1.0) == 0).all()


def test_cfg_single_batched_forward_and_formula():
    g = torch.Generator().manual_seed(3)
    x, y, sigma = (
        torch.randn(2, 4, 4, 4, generator=g),
        torch.randn(2, 3, 8, generator=g),
        torch.tensor([0.5, 7.0]),
    )
    net = CondNet()
    den = EDMDenoiser(net)
    d_c, d_u = den(x, sigma, y)[0], den(x, sigma, torch.zeros_like(y))[0]
    net.batches.clear()
    assert torch.equal(guided_denoise(den, x, sigma, y, 1.0), d_c) and net.batches == [2]
    d_w = guided_denoise(den, x, sigma, y, 5.0)
    assert net.batches == [2, 4]  # cond + uncond in ONE 2N forward
    assert torch.allclose(d_w, d_u + 5.0 * (d_c - d_u), atol=1e-5)
    c_in, c_skip, c_out, c_noise = (c.view(-1, 1, 1, 1) for c in edm_coefficients(sigma))
    f_u = 0.5 * c_in * x  # CondNet with the null (zero) caption
    f_c = f_u + y.mean((1, 2)).view(-1, 1, 1, 1) * (1 + c_noise)  # SPEC form: F_u + w·(F_c − F_u)
    assert torch.allclose(d_w, c_skip * x + c_out * (f_u + 5.0 * (f_c - f_u)), atol=1e-5)


def test_karras_sigmas():
    s = karras_sigmas(30)
    assert s.dtype == torch.float64 and s.shape == (31,) and s[-1] == 0 and (s[:-1] > s[1:]).all()
    assert s[0].item() == pytest.approx(80.0) and s[29].item() == pytest.approx(0.002)
    mid = (80 ** (1 / 7) + 10 / 29 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7  # eq. 5, i = 10
    assert s[10].item() == pytest.approx(mid, rel=1e-12) and karras_sigmas(1).tolist() == [80.0, 0.0]


def gaussian_denoiser(mu, s):
    """Ideal D for x0 ~ N(μ, s²I): E[x0 | x0 + σn = x] = (s²x + σ²μ)/(s² + σ²)."""
    return lambda x, sig: (s**2 * x + sig.view(-1, 1, 1, 1) ** 2 * mu) / (s**2 + sig.view(-1, 1, 1, 1) ** 2)


def test_heun_reproduces_gaussian_and_beats_euler():
    mu, s = 2.0, 0.9
    x_init = initial_noise((8192, 4, 2, 2), seed=0)  # (N, C, H, W) float64, 131k values
    out = edm_sample(gaussian_denoiser(mu, s), x_init, karras_sigmas(30), "heun")
    assert out.dtype == torch.float64
    assert abs(out.mean().item() / mu - 1) < 0.02 and abs(out.std().item() / s - 1) < 0.02
    # Exact ODE solution: x − μ scales with √(s² + σ²), so x(0) = μ + (x_T − μ)·s/√(s² + σ_max²).
    exact = mu + (x_init - mu) * s / math.sqrt(s**2 + 80.0**2)

    def rms(steps, sampler):
        return (
            (edm_sample(gaussian_denoiser(mu, s), x_init, karras_sigmas(steps), sampler) - exact)
            .pow(2)
            .mean()
            .sqrt()
            .item()
        )

    assert rms(30, "heun") < 0.02 * s and rms(100, "heun") < 0.002 * s
    for steps in (12, 18):  # measured: Heun 0.106 / 0.042, Euler 0.190 / 0.128
        assert rms(steps, "heun") < 0.6 * rms(steps, "euler")
    assert (
        rms(30, "heun") / rms(60, "heun") > 3.5 and rms(30, "euler") / rms(60, "euler") < 2.5
    )  # order 2 vs 1


def test_sample_seeds_and_nfe():
    y, net = torch.randn(3, 2, 8), CondNet()
    den = EDMDenoiser(net)
    torch.manual_seed(123)
    a = sample(den, y, (4, 4, 4), steps=10, guidance=5.0, seed=0)
    assert a.shape == (3, 4, 4, 4) and a.dtype == torch.float32 and torch.isfinite(a).all()
    assert net.batches == [6] * 19  # Heun: 2·steps − 1 calls, each cond + uncond
    torch.manual_seed(456)  # seed 0 is a real seed: the global RNG does not matter
    assert torch.equal(a, sample(den, y, (3, 4, 4, 4), steps=10, guidance=5.0, seed=0))
    assert torch.equal(
        a, sample(den, y, (4, 4, 4), steps=10, guidance=5.0, generator=torch.Generator().manual_seed(0))
    )
    assert not torch.allclose(a, sample(den, y, (4, 4, 4), steps=10, guidance=5.0, seed=1))
    net.batches.clear()
    sample(den, y, (4, 4, 4), steps=10, guidance=1.0, sampler="euler", seed=0)
    assert net.batches == [3] * 10
