"""EDM ODE samplers (Karras et al. 2022, Algorithm 1 with S_churn = 0): deterministic Heun and Euler.

The probability-flow ODE with EDM's choices σ(t) = t, s(t) = 1 is dx/dσ = (x − D(x; σ))/σ (eq. 3/4).
Both samplers only need a ``denoise_fn(x, sigma) -> D`` callable, so tests can plug in a
closed-form ideal denoiser and check the integration itself. x is kept in float64 between
steps (SPEC §2): 30 steps from σ = 80 down to 0.002 lose digits in float32 / bf16; each denoiser
call gets x cast to the model dtype and the result is cast back.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from microdit.diffusion.edm import EDMDenoiser, guided_denoise
from microdit.errors import ConfigError

DenoiseFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x (N,...), σ (N,)) -> D
SIGMA_MIN, SIGMA_MAX, RHO = 0.002, 80.0, 7.0  # Karras et al. 2022, Table 1 (EDM sampling)
SAMPLERS = ("heun", "euler")


def karras_sigmas(
    steps: int = 30,
    sigma_min: float = SIGMA_MIN,
    sigma_max: float = SIGMA_MAX,
    rho: float = RHO,
    device="cpu",
) -> torch.Tensor:
    """Time steps of Karras et al. 2022, eq. 5: σ_i = (σ_max^(1/ρ) + i/(N−1)·(σ_min^(1/ρ) − σ_max^(1/ρ)))^ρ.

    ρ = 7 spends more steps at low σ where detail forms. Returns (steps + 1,) float64, descending
    from σ_max to σ_min, with σ_N = 0 appended (the last step lands on the clean sample).
    """
    if steps < 1:
        raise ConfigError(f"sampling steps must be >= 1, got {steps}")
    i = torch.arange(steps, dtype=torch.float64, device=device)
    frac = i / max(steps - 1, 1)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + frac * (lo - hi)) ** rho  # (steps,)
    return torch.cat([sigmas, sigmas.new_zeros(1)])  # (steps + 1,)


def initial_noise(
    shape,
    sigma_max: float = SIGMA_MAX,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    device="cpu",
) -> torch.Tensor:
    """x_0 = N(0, I)·σ_max in float64 (Algorithm 1, line 2).

    ``generator`` wins if given; else ``seed`` (0 is a real seed) makes a CPU generator, so a seed
    gives the same noise on every device; with neither, torch's global RNG is used.
    """
    if generator is None and seed is not None:
        generator = torch.Generator("cpu").manual_seed(int(seed))
    gen_device = generator.device if generator is not None else device
    z = torch.randn(tuple(shape), generator=generator, device=gen_device, dtype=torch.float32)
    return z.to(device=device, dtype=torch.float64) * sigma_max  # (N, C, H, W) float64


def _call(denoise_fn: DenoiseFn, x: torch.Tensor, sigma: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """One denoiser evaluation: float64 state → model dtype → D back in float64."""
    sig = sigma.expand(x.shape[0])  # (N,) float64: EDMDenoiser computes its coefficients from it
    return denoise_fn(x.to(dtype), sig).to(torch.float64)  # (N, C, H, W)


def edm_sample(
    denoise_fn: DenoiseFn,
    x_init: torch.Tensor,
    sigmas: torch.Tensor,
    sampler: str = "heun",
    model_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Integrate dx/dσ = (x − D(x; σ))/σ from sigmas[0] to sigmas[-1] = 0.

    x_init: (N, ...) noise already scaled by sigmas[0]; sigmas: (K + 1,) descending, last 0.
    Heun (Algorithm 1): an Euler step, then the trapezoidal correction with the slope at the new
    point — except on the last step where σ_next = 0 and the slope is undefined (2K − 1 calls).
    Euler: the first-order step only (K calls). Returns (N, ...) float64.
    """
    if sampler not in SAMPLERS:
        raise ConfigError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    sigmas = sigmas.to(device=x_init.device, dtype=torch.float64)
    x = x_init.to(torch.float64)  # (N, C, H, W)
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]  # () float64
        d = (x - _call(denoise_fn, x, s, model_dtype)) / s  # (N, C, H, W) slope dx/dσ, eq. 3
        x_next = x + (s_next - s) * d  # Euler step (Algorithm 1, line 5/6)
        if sampler == "heun" and s_next > 0:
            d_next = (x_next - _call(denoise_fn, x_next, s_next, model_dtype)) / s_next
            x_next = x + (s_next - s) * 0.5 * (d + d_next)  # 2nd-order correction (line 8)
        x = x_next
    return x


@torch.no_grad()
def sample(
    denoiser: EDMDenoiser,
    y: torch.Tensor,
    shape,
    steps: int = 30,
    guidance: float = 5.0,
    sampler: str = "heun",
    seed: int | None = 0,
    generator: torch.Generator | None = None,
    sigma_min: float = SIGMA_MIN,
    sigma_max: float = SIGMA_MAX,
    rho: float = RHO,
    x_init: torch.Tensor | None = None,
) -> torch.Tensor:
    """Generate latents for captions ``y`` (N, L, Dy) with classifier-free guidance (SPEC §2).

    shape: (C, H, W) per sample or (N, C, H, W). Noise comes from ``x_init`` if given (N, C, H, W),
    already × σ_max, e.g. one seeded draw per sample), else from ``generator``, else from ``seed``
    (default 0; ``None`` = global RNG). Runs on y's device in the denoiser's
    parameter dtype (wrap in ``torch.autocast`` for bf16 compute); train/eval mode is the
    caller's choice. Returns (N, C, H, W) float32 latents (still × the VAE scaling factor).
    """
    n = y.shape[0]
    shape = tuple(shape)
    if len(shape) == 3:
        shape = (n, *shape)
    if len(shape) != 4 or shape[0] != n:
        raise ConfigError(f"sample shape {shape} must be (C, H, W) or ({n}, C, H, W) for {n} captions")
    param = next(denoiser.parameters(), None)
    model_dtype = param.dtype if param is not None else torch.float32
    sigmas = karras_sigmas(steps, sigma_min, sigma_max, rho, device=y.device)  # (steps + 1,)
    if x_init is None:
        x_init = initial_noise(shape, sigma_max, seed=seed, generator=generator, device=y.device)
    elif tuple(x_init.shape) != shape:
        raise ConfigError(f"x_init shape {tuple(x_init.shape)} != sample shape {shape}")
    x_init = x_init.to(device=y.device, dtype=torch.float64)

    def denoise_fn(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return guided_denoise(denoiser, x, sigma, y, guidance)

    return edm_sample(denoise_fn, x_init, sigmas, sampler=sampler, model_dtype=model_dtype).float()
