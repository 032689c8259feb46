"""Generate images from a trained MicroDiT: EDM sampler with CFG, then decode with the set's VAE.

Decoding follows the set's manifest: ``pixels`` latents are the image in [-1, 1]; an
``AutoencoderKL`` (hub id or local path) decodes latent / scaling_factor (+ shift).

On a GPU both run in bf16 where that is safe: the network under bf16 autocast (as in training;
the ODE state stays float64 in the sampler) and the VAE decoder with bf16 weights (bf16 keeps
fp32's range, so the SDXL VAE's fp16 overflow does not arise). The VAE decodes in slices of
``decode_batch`` images: its 1024-px activations, not the latents, bound the memory.
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


def half_precision(device: torch.device, precision: str = "auto") -> bool:
    """bf16 for inference: "auto" means on CUDA only (CPU bf16 is slow and changes FID digits)."""
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision={precision!r}: expected 'auto', 'bf16' or 'fp32'")
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


class LatentDecoder:
    """Latents -> uint8 images, as the set's manifest says they were encoded."""

    def __init__(self, vae: dict[str, Any], device: str | torch.device = "cpu", *, decode_batch: int = 16,
                 precision: str = "auto", model: torch.nn.Module | None = None):
        """``model``: an already built ``AutoencoderKL`` (benchmarks build one from a config)."""
        self.kind = vae.get("kind", "pixels")
        self.device = torch.device(device)
        self.decode_batch = max(1, int(decode_batch))
        self.model = None
        if self.kind != "pixels":
            if model is None:
                from diffusers import AutoencoderKL

                location = vae.get("path") or vae["name"]
                kwargs = {"subfolder": vae["subfolder"]} if vae.get("subfolder") else {}
                model = AutoencoderKL.from_pretrained(location, **kwargs)
            self.model = model.to(self.device).eval()
            if half_precision(self.device, precision):
                self.model = self.model.to(torch.bfloat16)
            self.scaling = float(vae.get("scaling_factor") or self.model.config.scaling_factor)
            self.shift = float(vae.get("shift_factor") or 0.0)

    @property
    def precision(self) -> str | None:
        """The VAE's decode dtype ("bf16", "fp32"...): it shifts the decoded pixels, so caches of
        decoded images name it; None for ``pixels`` latents, which no network decodes."""
        if self.model is None:
            return None
        return {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}.get(self.model.dtype,
                                                                                         str(self.model.dtype))

    @torch.no_grad()
    def __call__(self, latents: torch.Tensor) -> np.ndarray:
        if self.model is None:
            return to_uint8(latents)
        images = []
        for start in range(0, len(latents), self.decode_batch):  # slices bound the decoder's activations
            chunk = latents[start : start + self.decode_batch].to(self.device, torch.float32)
            chunk = (chunk / self.scaling + self.shift).to(self.model.dtype)
            images.append(to_uint8(self.model.decode(chunk).sample))  # (B, H, W, 3) uint8 on the host
        return np.concatenate(images) if images else np.zeros((0, 0, 0, 3), np.uint8)


def sample_seed(seed: int, index: int) -> int:
    """The noise seed of sample ``index``: a hash of (seed, index), so no two samples share noise."""
    return int(np.random.SeedSequence((int(seed) & (2**63 - 1), int(index))).generate_state(1, np.uint64)[0])


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
    first_index: int = 0,
    precision: str = "auto",
) -> np.ndarray:
    """uint8 (N, H, W, 3) images for caption embeddings (N, L, Dy).

    Sample ``first_index + i`` starts from its own noise (``sample_seed``), so an image does not
    depend on the batch size or on how samples are split over ranks: rank r generating samples
    [a, b) of N produces exactly the images a single process would for those indices.
    ``precision``: "auto" runs the network under bf16 autocast on CUDA, fp32 on CPU."""
    from microdit.diffusion.samplers import SIGMA_MAX, initial_noise

    device = next(model.parameters()).device
    denoiser = EDMDenoiser(model).eval()
    channels = model.config.latent_channels
    out = []
    for start in range(0, len(text_emb), batch_size):
        y = text_emb[start : start + batch_size].to(device, torch.float32)
        shape = (channels, latent_size, latent_size)
        noise = torch.stack([initial_noise(shape, SIGMA_MAX, seed=sample_seed(seed, first_index + start + i))
                             for i in range(len(y))])  # (B, C, h, w) float64, x sigma_max
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=half_precision(device, precision)):
            latents = sample(denoiser, y, (len(y), *shape), steps=steps, guidance=guidance, sampler=sampler,
                             x_init=noise)
        out.append(decoder(latents))
    return np.concatenate(out) if out else np.zeros((0, latent_size, latent_size, 3), np.uint8)
