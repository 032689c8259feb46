"""Generate images from a trained MicroDiT: EDM sampler with CFG, then decode with the set's VAE.

Decoding follows the set's manifest: ``pixels`` latents are the image in [-1, 1]; an
``AutoencoderKL`` (hub id or local path) decodes latent / scaling_factor (+ shift).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from microdit.diffusion import EDMDenoiser, sample


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] -> uint8 (N, H, W, 3)."""
    scaled = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return scaled.permute(0, 2, 3, 1).cpu().numpy()


class LatentDecoder:
    """Latents -> uint8 images, as the set's manifest says they were encoded."""

    def __init__(self, vae: dict[str, Any], device: str | torch.device = "cpu"):
        self.kind = vae.get("kind", "pixels")
        self.device = torch.device(device)
        self.model = None
        if self.kind != "pixels":
            from diffusers import AutoencoderKL

            location = vae.get("path") or vae["name"]
            kwargs = {"subfolder": vae["subfolder"]} if vae.get("subfolder") else {}
            self.model = AutoencoderKL.from_pretrained(location, **kwargs).to(self.device).eval()
            self.scaling = float(vae.get("scaling_factor") or self.model.config.scaling_factor)
            self.shift = float(vae.get("shift_factor") or 0.0)

    @torch.no_grad()
    def __call__(self, latents: torch.Tensor) -> np.ndarray:
        if self.model is None:
            return to_uint8(latents)
        latents = latents.to(self.device, self.model.dtype) / self.scaling + self.shift
        return to_uint8(self.model.decode(latents).sample)


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    text_emb: torch.Tensor,
    decoder: LatentDecoder,
    latent_size: int,
    *,
    steps: int = 30,
    guidance: float = 5.0,
    seed: int = 0,
    batch_size: int = 64,
    sampler: str = "heun",
) -> np.ndarray:
    """uint8 (N, H, W, 3) images for caption embeddings (N, L, Dy); sample i uses seed + i's batch."""
    device = next(model.parameters()).device
    denoiser = EDMDenoiser(model).eval()
    channels = model.config.latent_channels
    out = []
    for start in range(0, len(text_emb), batch_size):
        y = text_emb[start : start + batch_size].to(device, torch.float32)
        latents = sample(
            denoiser,
            y,
            (len(y), channels, latent_size, latent_size),
            steps=steps,
            guidance=guidance,
            sampler=sampler,
            seed=seed + start,
        )
        out.append(decoder(latents))
    return np.concatenate(out) if out else np.zeros((0, latent_size, latent_size, 3), np.uint8)
