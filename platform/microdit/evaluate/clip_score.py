"""CLIP score: 100 × mean cosine similarity of image and caption embeddings.

The paper's second metric. It needs real CLIP weights (e.g. ``openai/clip-vit-large-patch14``
on a cluster with hub access, or a local copy); none ship on PyPI, so when no model is
configured the score is *absent*: ``clip_score`` returns ``None`` and the caller logs the
metric as unavailable. A made-up number would be worse than none.

Definition used here: 100 × mean over pairs of cos(image_embed, text_embed), with CLIP's own
projections. torchmetrics' ``CLIPScore`` additionally clamps each pair at 0; with real CLIP
models the cosines of matching pairs are positive, so the two agree on real data.

Preprocessing: the model's own image processor when its directory has one
(``preprocessor_config.json``); otherwise CLIP's standard recipe by hand (bicubic resize of
the short side to the model's ``image_size``, centre crop, OpenAI mean/std), so a bare
``config.json + weights + tokenizer`` directory still works.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from microdit.errors import ConfigError

log = logging.getLogger(__name__)

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _as_tensor(output) -> torch.Tensor:
    """transformers 4 returns embeddings, transformers 5 an output whose pooler_output holds them."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class ClipScorer:
    """A loaded CLIP model, tokenizer and image preprocessing that scores image/caption pairs."""

    def __init__(self, model: str | Path, device: str | torch.device = "cpu", batch_size: int = 32):
        from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

        self.name = str(model)
        self.device = torch.device(device)
        self.batch_size = batch_size
        local = Path(model).exists()
        try:
            self.model = CLIPModel.from_pretrained(str(model), local_files_only=local).eval().to(self.device)
            self.tokenizer = AutoTokenizer.from_pretrained(str(model), local_files_only=local)
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"clip_model: cannot load CLIP from '{model}' ({exc.__class__.__name__}: {exc}); give a "
                "hub id reachable from this machine or a local directory with config.json, weights and "
                "tokenizer files, or leave clip_model unset (CLIP score is then reported as unavailable)"
            ) from exc
        try:
            self.image_processor = AutoImageProcessor.from_pretrained(str(model), local_files_only=local)
        except (OSError, ValueError):
            self.image_processor = None  # no preprocessor_config.json: use CLIP's recipe by hand
            log.info("clip_model '%s' has no image processor; using CLIP's standard preprocessing", model)
        self.image_size = int(self.model.config.vision_config.image_size)
        self.max_length = min(
            int(self.model.config.text_config.max_position_embeddings),
            int(getattr(self.tokenizer, "model_max_length", 10**6)),
        )

    def preprocess(self, images: np.ndarray) -> torch.Tensor:
        """uint8 (N, H, W, 3) -> normalised float (N, 3, S, S) for the vision tower."""
        if self.image_processor is not None:
            return self.image_processor(images=list(images), return_tensors="pt")["pixel_values"]
        x = torch.as_tensor(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0  # (N, 3, H, W)
        h, w = x.shape[-2:]
        scale = self.image_size / min(h, w)
        new_h, new_w = max(self.image_size, round(h * scale)), max(self.image_size, round(w * scale))
        x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True)
        top, left = (new_h - self.image_size) // 2, (new_w - self.image_size) // 2
        x = x[:, :, top : top + self.image_size, left : left + self.image_size].clamp(0, 1)  # (N, 3, S, S)
        mean = torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)
        return (x - mean) / std

    @torch.no_grad()
    def image_embeddings(self, images: np.ndarray) -> torch.Tensor:
        """Unit-norm image embeddings (N, P)."""
        out = []
        for start in range(0, len(images), self.batch_size):
            pixels = self.preprocess(images[start : start + self.batch_size]).to(self.device)
            out.append(_as_tensor(self.model.get_image_features(pixel_values=pixels)).float())  # (B, P)
        return F.normalize(torch.cat(out), dim=-1)

    @torch.no_grad()
    def text_embeddings(self, captions: Sequence[str]) -> torch.Tensor:
        """Unit-norm caption embeddings (N, P)."""
        out = []
        for start in range(0, len(captions), self.batch_size):
            tokens = self.tokenizer(
                list(captions[start : start + self.batch_size]),
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            out.append(
                _as_tensor(
                    self.model.get_text_features(
                        input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
                    )
                ).float()
            )  # (B, P)
        return F.normalize(torch.cat(out), dim=-1)

    def score(self, images: np.ndarray, captions: Sequence[str]) -> float:
        """100 × mean cosine of matching (image, caption) pairs."""
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ConfigError(
                f"clip score images: expected uint8 (N, H, W, 3), got {images.dtype} {images.shape}"
            )
        if len(images) != len(captions) or len(images) == 0:
            raise ConfigError(
                f"clip score: need one caption per image, got {len(images)} images and {len(captions)} captions"
            )
        cosines = (self.image_embeddings(images) * self.text_embeddings(captions)).sum(dim=-1)  # (N,)
        return float(100.0 * cosines.double().mean())


_SCORERS: dict[tuple[str, str], ClipScorer] = {}


def load_clip_scorer(model: str | Path | None, device: str | torch.device = "cpu") -> ClipScorer | None:
    """The scorer for a configured CLIP model (cached per process), or None when none is configured."""
    if model is None or str(model).strip() == "":
        return None
    key = (str(model), str(device))
    if key not in _SCORERS:
        _SCORERS[key] = ClipScorer(model, device=device)
    return _SCORERS[key]


def clip_score(
    images: np.ndarray,
    captions: Sequence[str],
    model: str | Path | ClipScorer | None,
    device: str | torch.device = "cpu",
) -> float | None:
    """CLIP score of uint8 (N, H, W, 3) images against their captions; None when no model is configured.

    Callers log a None as "clip_score unavailable (no clip_model configured)" and record no value.
    """
    scorer = model if isinstance(model, ClipScorer) else load_clip_scorer(model, device)
    if scorer is None:
        return None
    return scorer.score(images, captions)
