"""Analytic FLOP count of a MicroDiT forward pass, per sample (SPEC §6).

Counts every matmul (2 FLOPs per multiply-add) and the two attention products (QK^T and AV);
ignores norms, activations, softmax and gathers (<1% at these widths). Training is taken as
3x the forward (forward + backward for activations and weights). Used for MFU, for the cost
prediction of ``--dry-run``, and checked against ``torch.utils.flop_counter`` in the tests.
"""

from __future__ import annotations

from dataclasses import dataclass

from microdit.config.model import ModelConfig

TRAIN_FLOPS_PER_FORWARD = 3.0


@dataclass(frozen=True)
class FlopCount:
    """Forward FLOPs per sample, split by stage, and the derived training FLOPs."""

    embed: float
    mixer: float
    backbone: float
    final: float

    @property
    def forward(self) -> float:
        return self.embed + self.mixer + self.backbone + self.final

    @property
    def train(self) -> float:
        return TRAIN_FLOPS_PER_FORWARD * self.forward


def _mm(rows: float, fan_in: int, fan_out: int) -> float:
    return 2.0 * rows * fan_in * fan_out


def _block(
    cfg: ModelConfig,
    tokens: int,
    caption_len: int,
    width: int,
    qkv_ratio: float,
    ffn_ratio: float,
    moe_position: bool,
) -> float:
    """One DiTBlock over ``tokens`` image tokens of width ``width``."""
    qkv = cfg.attn_width(width, qkv_ratio)  # exactly d at ratio 1
    flops = _mm(1, cfg.width, 6 * width)  # adaLN from c
    flops += (
        _mm(tokens, width, 3 * qkv) + 2 * 2.0 * tokens * tokens * qkv + _mm(tokens, qkv, width)
    )  # self-attn
    flops += _mm(tokens, width, width) + _mm(caption_len, width, 2 * width)  # cross q, kv
    flops += 2 * 2.0 * tokens * caption_len * width + _mm(tokens, width, width)  # cross products, out
    kind, ratio = cfg.ffn_kind(moe_position, ffn_ratio)
    if kind == "moe":
        hidden = cfg.expert_hidden(width, ratio)
        per_expert = max(1, min(tokens, int(cfg.expert_capacity * tokens / cfg.num_experts)))
        flops += _mm(tokens, width, cfg.num_experts)  # router
        flops += cfg.num_experts * (_mm(per_expert, width, hidden) + _mm(per_expert, hidden, width))
    else:
        hidden = cfg.swiglu_hidden(width, ratio)
        flops += 2 * _mm(tokens, width, hidden) + _mm(tokens, hidden, width)
    return flops


def forward_flops(
    cfg: ModelConfig, latent_size: int, mask_ratio: float = 0.0, caption_len: int = 77
) -> FlopCount:
    """Forward FLOPs per sample at a square latent of side ``latent_size``.

    Deferred masking: the mixer sees all T tokens, the backbone floor(T(1-r)). Naive: both see
    the kept tokens only (there is no mixer). ``mask_ratio`` is ignored when masking is 'none'.
    """
    d, length = cfg.width, caption_len
    tokens = cfg.num_tokens(latent_size)
    ratio = mask_ratio if cfg.masking != "none" else 0.0
    kept = cfg.kept_tokens(latent_size, ratio)
    head_width = 3 * d  # caption block: self-attention at full width
    caption_hidden = cfg.swiglu_hidden(d, 4.0)

    embed = _mm(tokens, cfg.latent_channels * cfg.patch_size**2, d)  # patch conv
    embed += _mm(1, 512, d) + _mm(1, d, d)  # timestep MLP
    embed += _mm(length, cfg.caption_dim, d) + _mm(length, d, d)  # caption projection
    embed += _mm(length, d, head_width) + 2 * 2.0 * length * length * d + _mm(length, d, d)  # caption attn
    embed += 2 * _mm(length, d, caption_hidden) + _mm(length, caption_hidden, d)  # caption SwiGLU
    embed += _mm(1, d, d) * 2  # pooled MLP

    mixer = 0.0
    if cfg.use_mixer:
        dm = cfg.mixer_width
        mixer_tokens = kept if cfg.masking == "naive" else tokens
        if dm != d:
            mixer += _mm(mixer_tokens, d, dm) + _mm(length, d, dm) + _mm(kept, dm, d)  # width maps
        for i in range(cfg.mixer_depth):
            mixer += _block(
                cfg,
                mixer_tokens,
                length,
                dm,
                cfg.mixer_qkv_ratio,
                cfg.mixer_ffn_ratio,
                cfg.mixer_moe_position(i),
            )
    backbone = sum(
        _block(cfg, kept, length, d, cfg.qkv_ratio(i), cfg.ffn_ratio(i), cfg.backbone_moe_position(i))
        for i in range(cfg.depth)
    )
    final = _mm(1, d, 2 * d) + _mm(kept, d, cfg.patch_size**2 * cfg.latent_channels)
    return FlopCount(embed=embed, mixer=mixer, backbone=backbone, final=final)


def train_flops_per_image(
    cfg: ModelConfig, latent_size: int, mask_ratio: float = 0.0, caption_len: int = 77
) -> float:
    """Training FLOPs for one image (≈ 3 x forward)."""
    return forward_flops(cfg, latent_size, mask_ratio, caption_len).train
