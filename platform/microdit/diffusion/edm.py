"""EDM objective (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative
Models", Table 1 / Sec. 5) with MicroDiT's patch masking, caption dropout and classifier-free guidance.

Why EDM preconditioning: the raw network F always sees unit-variance inputs (c_in) and predicts a
unit-variance target (c_out), whatever σ is; the skip term c_skip·x hands the "easy" part of the
answer (the noisy input itself at low σ) straight through. λ(σ) = 1/c_out² then makes the
effective loss on F equal to a plain MSE, so every noise level contributes on the same scale.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from microdit.model.masking import random_keep_indices
from microdit.model.output import MicroDiTOutput

SIGMA_DATA = 0.9  # std of the SDXL-VAE latents × scaling factor (SPEC §2, official code)


def _randn(shape, generator: torch.Generator | None, device, dtype=torch.float32) -> torch.Tensor:
    """Normal draws on the generator's own device, then moved: a CPU generator works for CUDA data."""
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device, dtype=dtype).to(device)


def sample_sigma(
    n: int, p_mean: float, p_std: float, generator: torch.Generator | None = None, device="cpu"
) -> torch.Tensor:
    """Training noise levels: ln σ ~ N(P_mean, P_std²) (Karras et al. 2022, Table 1 "training").

    SPEC §2: (−0.6, 1.2) at 256 px, (0.0, 0.6) at 512 px. Returns (n,) float32.
    """
    return torch.exp(p_mean + p_std * _randn((n,), generator, device))  # (n,)


def edm_coefficients(sigma: torch.Tensor, sigma_data: float = SIGMA_DATA):
    """Preconditioning of Karras et al. 2022, Table 1 (eq. 7): returns (c_in, c_skip, c_out, c_noise).

    c_in = 1/√(σ²+σ_d²)  c_skip = σ_d²/(σ²+σ_d²)  c_out = σσ_d/√(σ²+σ_d²)  c_noise = ln(σ)/4.
    Each has sigma's shape; computed in sigma's dtype (at least float32).
    """
    sigma = torch.as_tensor(sigma)
    sigma = sigma.to(torch.promote_types(sigma.dtype, torch.float32))
    var = sigma**2 + sigma_data**2
    return var.rsqrt(), sigma_data**2 / var, sigma * sigma_data * var.rsqrt(), sigma.log() / 4


def edm_loss_weight(sigma: torch.Tensor, sigma_data: float = SIGMA_DATA) -> torch.Tensor:
    """λ(σ) = (σ²+σ_d²)/(σσ_d)² = 1/c_out² (Karras et al. 2022, Table 1): unit-weight MSE on F."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


class EDMDenoiser(torch.nn.Module):
    """D(x; σ) = c_skip·x + c_out·F(c_in·x, c_noise, y) around a MicroDiT-style network (eq. 7).

    The network is called as ``net(c_in·x, c_noise, y, mask_ratio=r, generator=g, keep_idx=k)``;
    for a MicroDiT the random keep-indices are drawn here from ``generator`` (the draw the model
    would make, same order, same values), so a compiled network never sees a ``torch.Generator``
    (which ``torch.compile`` cannot trace: a graph break at every step).
    and returns a :class:`MicroDiTOutput`. ``c_in·x`` is cast to x's dtype (the model's input
    dtype); c_noise is float32 (the net's timestep embedder casts it). D is computed in σ's dtype
    (at least float32), so bf16 network outputs never set the precision of D.
    """

    def __init__(self, net: torch.nn.Module, sigma_data: float = SIGMA_DATA):
        super().__init__()
        self.net = net
        self.sigma_data = float(sigma_data)

    def forward(
        self,
        x_noisy: torch.Tensor,
        sigma: torch.Tensor | float,
        y: torch.Tensor,
        *,
        mask_ratio: float = 0.0,
        generator: torch.Generator | None = None,
        keep_idx: torch.Tensor | None = None,
        **net_kwargs,
    ) -> tuple[torch.Tensor, MicroDiTOutput]:
        n = x_noisy.shape[0]
        sigma = torch.as_tensor(sigma, device=x_noisy.device)
        if not sigma.is_floating_point():
            sigma = sigma.float()
        sigma = sigma.reshape(-1).expand(n) if sigma.numel() == 1 else sigma.reshape(n)  # (N,)
        c_in, c_skip, c_out, c_noise = edm_coefficients(sigma, self.sigma_data)  # each (N,)
        bc = (-1,) + (1,) * (x_noisy.ndim - 1)  # broadcast (N,) over (C, H, W)
        patch = _patch_size(self.net)
        if keep_idx is None and mask_ratio > 0 and patch is not None:  # drawn here, outside a compiled net
            tokens = (x_noisy.shape[-2] // patch) * (x_noisy.shape[-1] // patch)
            keep_idx = random_keep_indices(n, tokens, mask_ratio, generator, device=x_noisy.device)  # (N, K)
            generator = None
        out = self.net(
            (c_in.view(bc) * x_noisy).to(x_noisy.dtype),  # (N, C, H, W)
            c_noise.float(),  # (N,)
            y,
            mask_ratio=mask_ratio,
            generator=generator,
            keep_idx=keep_idx,
            **net_kwargs,
        )
        dt = c_skip.dtype
        denoised = c_skip.view(bc) * x_noisy.to(dt) + c_out.view(bc) * out.sample.to(dt)  # (N,C,H,W)
        return denoised, out


def _patch_size(net: torch.nn.Module) -> int | None:
    """The patch size of the MicroDiT inside ``net`` (through DDP's ``module`` and torch.compile's
    ``_orig_mod``), or None for another network (which then draws its own mask)."""
    for _ in range(4):
        config = getattr(net, "config", None)
        if config is not None and hasattr(config, "patch_size"):
            return int(config.patch_size)
        net = getattr(net, "module", None) or getattr(net, "_orig_mod", None)
        if net is None:
            return None
    return None


class EDMLossResult(NamedTuple):
    """What :func:`edm_loss` returns. ``loss`` is the scalar to backpropagate."""

    loss: torch.Tensor  # () float32
    output: MicroDiTOutput  # the network output (mask, router stats...)
    per_sample: torch.Tensor  # (N,) float32, weighted loss of each sample over its kept patches
    sigma: torch.Tensor  # (N,) the noise levels used


def masked_patch_mean(err: torch.Tensor, mask: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Per-sample mean of a (N, C, H, W) error over kept patches only (mask (N, T), 1 = dropped).

    Mean over channels → p×p average pool → (N, T) in the row-major patch order of the patch
    embedding (flatten of a stride-p conv) → mean over kept patches. Dropped patches are removed
    with ``where``: their values never reach the loss (not even inf / NaN) and their gradient
    is exactly zero (for finite predictions; 0·inf would still give NaN in the backward).
    """
    n, _, h, w = err.shape
    per_patch = F.avg_pool2d(err.mean(dim=1, keepdim=True), patch_size).reshape(n, -1)  # (N, T)
    if per_patch.shape != mask.shape:
        raise ValueError(
            f"mask shape {tuple(mask.shape)} does not match the {h}x{w} latent with patch "
            f"{patch_size} (expected {tuple(per_patch.shape)})"
        )
    kept = mask.to(per_patch.device) < 0.5  # (N, T) bool
    summed = torch.where(kept, per_patch, torch.zeros_like(per_patch)).sum(dim=1)  # (N,)
    return summed / kept.sum(dim=1).clamp_min(1)  # (N,)


def edm_loss(
    denoiser: EDMDenoiser,
    x0: torch.Tensor,
    y: torch.Tensor,
    *,
    p_mean: float,
    p_std: float,
    mask_ratio: float = 0.0,
    generator: torch.Generator | None = None,
    keep_idx: torch.Tensor | None = None,
    sigma: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    masking: str | None = None,
) -> EDMLossResult:
    """EDM training loss E_σ,n[λ(σ)·‖D(x0 + σn; σ) − x0‖²] (Karras et al. 2022, eq. 8), SPEC §2.

    ``generator`` draws σ and the noise, and is handed to the net for its patch mask; ``sigma``
    (N,) and ``noise`` (N, C, H, W) override the draws (tests, reproducibility); ``masking`` overrides
    the net's masking strategy (a phase's ``masking``). The squared
    error is taken in float32 even under bf16 autocast. If the net reports a mask, the loss
    counts kept patches only (see :func:`masked_patch_mean`); otherwise it is the mean over all.
    """
    n = x0.shape[0]
    if sigma is None:
        sigma = sample_sigma(n, p_mean, p_std, generator=generator, device=x0.device)  # (N,)
    if noise is None:
        noise = _randn(x0.shape, generator, x0.device)  # (N, C, H, W)
    sigma = sigma.to(device=x0.device, dtype=torch.float32)
    x_noisy = x0 + sigma.view(-1, 1, 1, 1) * noise.to(x0.dtype)  # (N, C, H, W)
    net_kwargs = {"masking": masking} if masking is not None else {}  # a phase's masking strategy
    denoised, out = denoiser(x_noisy, sigma, y, mask_ratio=mask_ratio, generator=generator, keep_idx=keep_idx,
                             **net_kwargs)
    weight = edm_loss_weight(sigma, denoiser.sigma_data).view(-1, 1, 1, 1)  # (N, 1, 1, 1)
    err = weight * (denoised.float() - x0.float()) ** 2  # (N, C, H, W) float32
    if out.mask is None:
        per_sample = err.mean(dim=(1, 2, 3))  # (N,)
    else:
        per_sample = masked_patch_mean(err, out.mask, out.patch_size)  # (N,)
    return EDMLossResult(per_sample.mean(), out, per_sample, sigma)


def caption_dropout(y: torch.Tensor, prob: float = 0.1, generator: torch.Generator | None = None):
    """Zero whole samples' caption embeddings with probability ``prob`` (CFG training, SPEC §2).

    All-zero embeddings are the null condition the sampler uses as the unconditional input.
    y: (N, L, Dy) → same shape; dropped rows are exactly 0, the others untouched.
    """
    if prob <= 0:
        return y
    gen_device = generator.device if generator is not None else y.device
    drop = torch.rand((y.shape[0],), generator=generator, device=gen_device).to(y.device) < prob  # (N,)
    return torch.where(drop.view(-1, *([1] * (y.ndim - 1))), torch.zeros_like(y), y)


def guided_denoise(
    denoiser: EDMDenoiser, x: torch.Tensor, sigma: torch.Tensor | float, y: torch.Tensor, guidance: float
) -> torch.Tensor:
    """Classifier-free guidance D_u + w·(D_c − D_u) (Ho & Salimans 2022), null caption = zeros.

    SPEC writes F_u + w·(F_c − F_u) on the network output; the two are identical because
    D = c_skip·x + c_out·F and the c_skip·x terms cancel in D_c − D_u (same x, same σ).
    The conditional and unconditional passes run as ONE forward on a 2N batch;
    guidance 1.0 is exactly the conditional denoiser and costs a single N-batch forward.
    x: (N, C, H, W), y: (N, L, Dy) → D (N, C, H, W).
    """
    if guidance == 1.0:
        return denoiser(x, sigma, y)[0]
    n = x.shape[0]
    sigma = torch.as_tensor(sigma, device=x.device)
    sigma2 = sigma.reshape(-1).expand(n) if sigma.numel() == 1 else sigma.reshape(n)  # (N,)
    d_both, _ = denoiser(
        torch.cat([x, x]),  # (2N, C, H, W)
        torch.cat([sigma2, sigma2]),  # (2N,)
        torch.cat([y, torch.zeros_like(y)]),  # (2N, L, Dy): conditional, then null
    )
    d_cond, d_uncond = d_both.chunk(2)  # (N, C, H, W) each
    return d_uncond + guidance * (d_cond - d_uncond)
