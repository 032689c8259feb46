"""EDM objective and samplers for MicroDiT (SPEC §2; Karras et al. 2022).

- :mod:`.edm`: σ sampling, preconditioning (:class:`EDMDenoiser`), the (masked) loss, caption
  dropout and classifier-free guidance.
- :mod:`.samplers`: Karras time steps and the deterministic Heun / Euler ODE samplers.
"""

from microdit.diffusion.edm import (
    SIGMA_DATA,
    EDMDenoiser,
    EDMLossResult,
    caption_dropout,
    edm_coefficients,
    edm_loss,
    edm_loss_weight,
    guided_denoise,
    masked_patch_mean,
    sample_sigma,
)
from microdit.diffusion.samplers import (
    RHO,
    SAMPLERS,
    SIGMA_MAX,
    SIGMA_MIN,
    DenoiseFn,
    edm_sample,
    initial_noise,
    karras_sigmas,
    sample,
)

__all__ = [
    "RHO",
    "SAMPLERS",
    "SIGMA_DATA",
    "SIGMA_MAX",
    "SIGMA_MIN",
    "DenoiseFn",
    "EDMDenoiser",
    "EDMLossResult",
    "caption_dropout",
    "edm_coefficients",
    "edm_loss",
    "edm_loss_weight",
    "edm_sample",
    "guided_denoise",
    "initial_noise",
    "karras_sigmas",
    "masked_patch_mean",
    "sample",
    "sample_sigma",
]
