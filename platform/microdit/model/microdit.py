"""MicroDiT: a sparse-MoE diffusion transformer with deferred patch masking (Sehwag et al. 2024).

Forward (SPEC §1): patchify + fixed sin-cos positions -> caption path gives the cross-attention
context and a pooled vector added to the noise-level embedding (c) -> optional patch-mixer over
ALL patches -> drop a fraction r of patches (deferred masking; naive masking drops before any
mixer) -> backbone blocks on kept patches only -> final layer -> zero refill -> unpatchify.
The model knows nothing of noise levels beyond c_noise: EDM preconditioning lives in
``microdit.diffusion``.

Execution switches change memory or speed, not the function: ``activation_checkpointing``
recomputes each mixer/backbone block in backward (``torch.utils.checkpoint``, non-reentrant),
``set_low_precision_norms`` runs every LayerNorm in the autocast dtype (the official recipe), and
``attention_kernel`` pins SDPA's backend for the whole forward *and* for the blocks' recompute in
backward (a pin set only around the forward left the recompute on another backend: the saved
tensors then differ and the first backward fails with ``CheckpointError``).

Dtype flow under autocast, as the official code: the fixed position table is an fp32 buffer added
to the bf16 patch embedding, so the token stream is fp32 from there (until a linear, e.g. the
mixer's width map, makes it bf16), and every residual add keeps the wider dtype.

Compile-friendliness (``torch.compile(model, dynamic=False)``): no Python state is written during
a forward (routing statistics are returned, the position table is a buffer prepared outside the
graph), so one graph per input shape, no graph break, also under activation checkpointing.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from microdit.config.model import ModelConfig
from microdit.model.attention import CrossAttention, SelfAttention, attention_kernel
from microdit.model.blocks import DiTBlock, FinalLayer
from microdit.model.embeddings import (
    CaptionBlock,
    CaptionEmbedder,
    Mlp,
    PatchEmbed,
    TimestepEmbedder,
    sincos_pos_embed_2d,
)
from microdit.model.feedforward import SwiGLU
from microdit.model.initialisation import initialise_microdit
from microdit.model.masking import drop_mask, gather_tokens, random_keep_indices, refill_zeros
from microdit.model.moe import ExpertChoiceMoE
from microdit.model.norms import WeightOnlyLayerNorm
from microdit.model.output import MicroDiTOutput


class WidthMap(nn.Sequential):
    """Weight-only LayerNorm + Linear between mixer and backbone widths (SPEC §1 steps 5, 7)."""

    def __init__(self, in_width: int, out_width: int, eps: float, bias: bool):
        super().__init__(WeightOnlyLayerNorm(in_width, eps), nn.Linear(in_width, out_width, bias=bias))


class MicroDiT(nn.Module):
    """The network F(x, c_noise, y) of EDM; returns a ``MicroDiTOutput``."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = cfg = config
        d, p = cfg.width, cfg.patch_size
        self.x_embedder = PatchEmbed(p, cfg.latent_channels, d)
        self.t_embedder = TimestepEmbedder(d)
        self.y_embedder = CaptionEmbedder(cfg.caption_dim, d, cfg.norm_eps)
        self.y_emb_preprocess = CaptionBlock(d, cfg.head_dim, cfg.multiple_of, cfg.norm_eps, cfg.use_bias)
        self.pooled_y_emb_process = Mlp(d, d, d, cfg.norm_eps)

        if cfg.use_mixer:
            dm = cfg.mixer_width
            self.patch_mixer = nn.ModuleList(
                self._block(
                    dm, cfg.mixer_qkv_ratio, *cfg.ffn_kind(cfg.mixer_moe_position(i), cfg.mixer_ffn_ratio)
                )
                for i in range(cfg.mixer_depth)
            )
            if dm != d:
                self.patch_mixer_map_xin = WidthMap(d, dm, cfg.norm_eps, cfg.use_bias)
                self.patch_mixer_map_y = WidthMap(d, dm, cfg.norm_eps, cfg.use_bias)
                self.patch_mixer_map_xout = WidthMap(dm, d, cfg.norm_eps, cfg.use_bias)
        self.blocks = nn.ModuleList(
            self._block(d, cfg.qkv_ratio(i), *cfg.ffn_kind(cfg.backbone_moe_position(i), cfg.ffn_ratio(i)))
            for i in range(cfg.depth)
        )
        self.final_layer = FinalLayer(d, d, p * p * cfg.latent_channels, cfg.norm_eps)
        # The fixed sin-cos table (1, T, D) fp32 of the grid in ``pos_grid``; not saved (recomputed).
        self.register_buffer("pos_embed", torch.zeros(1, 0, d), persistent=False)
        self.pos_grid: tuple[int, int] | None = None
        self.activation_checkpointing = False  # recompute blocks in backward (training only)
        self.attention_kernel = "auto"  # SDPA backend: auto | flash | efficient | cudnn | math
        initialise_microdit(self)

    def set_low_precision_norms(self, enabled: bool = True) -> MicroDiT:
        """Every LayerNorm and QK-norm in the autocast dtype (fp32 outside autocast, as before)."""
        for module in self.modules():
            if isinstance(module, (WeightOnlyLayerNorm, SelfAttention, CrossAttention)):
                module.low_precision = enabled
        return self

    def _run_block(
        self, block: DiTBlock, x: torch.Tensor, c: torch.Tensor, context: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One block; under ``activation_checkpointing`` only its inputs are kept for backward, and
        the recompute runs under the same pinned attention backend as the forward."""
        if self.activation_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(self._pinned_block, block, x, c, context, use_reentrant=False)
        return block(x, c, context)

    def _pinned_block(
        self, block: DiTBlock, x: torch.Tensor, c: torch.Tensor, context: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with attention_kernel(self.attention_kernel):
            return block(x, c, context)

    def _block(self, width: int, qkv_ratio: float, ffn: str, ffn_ratio: float) -> DiTBlock:
        cfg = self.config
        if ffn == "moe":
            ffn = ExpertChoiceMoE(
                width, cfg.expert_hidden(width, ffn_ratio), cfg.num_experts, cfg.expert_capacity
            )
        else:
            ffn = SwiGLU(width, cfg.swiglu_hidden(width, ffn_ratio), bias=cfg.use_bias)
        return DiTBlock(
            width,
            cfg.width,
            cfg.head_dim,
            cfg.attn_width(width, qkv_ratio),
            ffn,
            eps=cfg.norm_eps,
            bias=cfg.use_bias,
        )

    # ------------------------------------------------------------------ pieces of the forward
    def positions(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """The fixed (1, T, D) fp32 table of this grid: the ``pos_embed`` buffer when it holds this
        grid, else built (and kept as the buffer, outside ``torch.compile``; a compiled forward
        builds it in its graph instead of writing module state, which would cost a recompile)."""
        if (grid_h, grid_w) == self.pos_grid:
            return self.pos_embed
        if torch.compiler.is_compiling():
            return self._position_table(grid_h, grid_w)
        return self.use_grid(grid_h, grid_w).pos_embed

    def use_grid(self, grid_h: int, grid_w: int) -> MicroDiT:
        """Make ``pos_embed`` the table of a (grid_h, grid_w) patch grid. The training loop calls it
        at each phase start, before the (compiled) forward sees the new resolution."""
        self.pos_embed = self._position_table(grid_h, grid_w)  # a buffer: follows .to(device), not saved
        self.pos_grid = (grid_h, grid_w)
        return self

    def _position_table(self, grid_h: int, grid_w: int) -> torch.Tensor:
        table = sincos_pos_embed_2d(self.config.width, grid_h, grid_w, self.config.pos_scale(grid_h))
        return table.to(self.pos_embed.device)[None]  # (1, T, D) float32

    def condition(self, c_noise: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Caption path + noise embedding: returns c (N, D) and the context (N, L, D)."""
        context = self.y_emb_preprocess(self.y_embedder(y))  # (N, L, D)
        c = self.t_embedder(c_noise) + self.pooled_y_emb_process(context.mean(dim=1))  # (N, D)
        return c, context

    def unpatchify(self, tokens: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
        p, ch = self.config.patch_size, self.config.latent_channels
        return rearrange(tokens, "n (h w) (p q c) -> n c (h p) (w q)", h=grid_h, w=grid_w, p=p, q=p, c=ch)

    def forward(
        self,
        x: torch.Tensor,
        c_noise: torch.Tensor,
        y: torch.Tensor,
        mask_ratio: float | None = None,
        generator: torch.Generator | None = None,
        keep_idx: torch.Tensor | None = None,
        masking: str | None = None,
    ) -> MicroDiTOutput:
        """x (N, C, H, W), c_noise (N,), y (N, L, Dy). ``mask_ratio`` defaults to 0 (inference);
        ``keep_idx`` (N, K) overrides the random draw. ``masking`` (a phase's strategy) overrides
        ``config.masking``: naive drops right after the patch embedding (a patch-mixer, if any, then
        sees only the kept patches), deferred after the mixer; masking needs one of the two.
        """
        cfg = self.config
        strategy = masking or cfg.masking
        n, _, height, width = x.shape
        gh, gw = height // cfg.patch_size, width // cfg.patch_size
        num_tokens = gh * gw
        ratio = 0.0 if mask_ratio is None else float(mask_ratio)
        if (ratio > 0 or keep_idx is not None) and strategy == "none":
            raise ValueError(f"mask_ratio > 0 or keep_idx given, but masking='{strategy}'")
        if strategy == "deferred" and not cfg.use_mixer:
            raise ValueError("deferred masking needs a patch-mixer (model.mixer_depth > 0)")
        if keep_idx is None and ratio > 0:
            keep_idx = random_keep_indices(n, num_tokens, ratio, generator, device=x.device)

        with attention_kernel(self.attention_kernel):
            return self._forward(x, c_noise, y, keep_idx, strategy, gh, gw)

    def _forward(self, x: torch.Tensor, c_noise: torch.Tensor, y: torch.Tensor, keep_idx: torch.Tensor | None,
                 strategy: str, gh: int, gw: int) -> MicroDiTOutput:
        cfg = self.config
        num_tokens = gh * gw
        stats: list[dict[str, torch.Tensor]] = []  # one per MoE block, returned (not stored)
        tokens = self.x_embedder(x)  # (N, T, D), bf16 under autocast
        tokens = tokens + self.positions(gh, gw)  # fp32 table: the stream is fp32 (official dtype flow)
        c, context = self.condition(c_noise, y)

        if keep_idx is not None and strategy == "naive":
            tokens = gather_tokens(tokens, keep_idx)  # (N, K, D): naive masking
        if cfg.use_mixer:
            mixed, mixer_context = tokens, context
            if hasattr(self, "patch_mixer_map_xin"):
                mixed, mixer_context = self.patch_mixer_map_xin(tokens), self.patch_mixer_map_y(context)
            for block in self.patch_mixer:
                mixed, block_stats = self._run_block(block, mixed, c, mixer_context)  # (N, T, Dm): all patches
                stats.append(block_stats)
            if keep_idx is not None and strategy == "deferred":
                mixed = gather_tokens(mixed, keep_idx)  # (N, K, Dm): deferred masking
            tokens = self.patch_mixer_map_xout(mixed) if hasattr(self, "patch_mixer_map_xout") else mixed
        for block in self.blocks:
            tokens, block_stats = self._run_block(block, tokens, c, context)  # (N, K, D)
            stats.append(block_stats)
        out = self.final_layer(tokens, c)  # (N, K, p*p*C)

        mask = None
        if keep_idx is not None:
            out = refill_zeros(out, keep_idx, num_tokens)  # (N, T, p*p*C), dropped = 0
            mask = drop_mask(keep_idx, num_tokens)
        return MicroDiTOutput(
            self.unpatchify(out, gh, gw), mask, keep_idx, cfg.patch_size, average_router_stats(stats)
        )


def average_router_stats(per_block: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Router statistics of one forward averaged over its MoE blocks ({} for a dense model)."""
    moe = [s for s in per_block if s]
    if not moe:
        return {}
    return {key: torch.stack([s[key] for s in moe]).mean() for key in moe[0]}
