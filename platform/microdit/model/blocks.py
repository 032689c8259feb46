"""The MicroDiT transformer block (adaLN-Zero, ungated cross-attention) and the final layer."""

from __future__ import annotations

import torch
from torch import nn

from microdit.model.attention import CrossAttention, SelfAttention
from microdit.model.feedforward import SwiGLU
from microdit.model.moe import ExpertChoiceMoE
from microdit.model.norms import WeightOnlyLayerNorm, modulate


class AdaLNModulation(nn.Sequential):
    """GELU(tanh) -> Linear(D_c -> k*d) with bias, zero-initialised so every gate starts closed (adaLN-Zero)."""

    def __init__(self, cond_width: int, width: int, chunks: int):
        super().__init__(nn.GELU(approximate="tanh"), nn.Linear(cond_width, chunks * width, bias=True))
        self.chunks = chunks

    def forward(self, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return super().forward(c).chunk(self.chunks, dim=-1)  # k x (N, d)


class DiTBlock(nn.Module):
    """Pre-norm block (SPEC §1):
    x += gate_msa * SelfAttn(modulate(LN1(x)));  x += CrossAttn(LN2(x), ctx);  x += gate_mlp * FFN(modulate(LN3(x))).
    """

    def __init__(
        self,
        width: int,
        cond_width: int,
        head_dim: int,
        qkv_width: int,
        ffn: SwiGLU | ExpertChoiceMoE,
        eps: float = 1e-6,
        bias: bool = False,
    ):
        super().__init__()
        self.norm1 = WeightOnlyLayerNorm(width, eps)
        self.attn = SelfAttention(width, qkv_width, head_dim, eps=eps, bias=bias)
        self.norm2 = WeightOnlyLayerNorm(width, eps)
        self.cross_attn = CrossAttention(width, head_dim, eps=eps, bias=bias)
        self.norm3 = WeightOnlyLayerNorm(width, eps)
        self.mlp = ffn
        self.adaLN_modulation = AdaLNModulation(cond_width, width, 6)

    @property
    def is_moe(self) -> bool:
        return isinstance(self.mlp, ExpertChoiceMoE)

    def forward(
        self, x: torch.Tensor, c: torch.Tensor, context: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(new residual stream (N, T, d), router statistics: empty for a dense FFN)."""
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(
            c
        )  # 6 x (N, d)
        x = x + gate_msa[:, None] * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))  # (N, T, d)
        x = x + self.cross_attn(self.norm2(x), context)
        h = modulate(self.norm3(x), shift_mlp, scale_mlp)
        out, stats = self.mlp(h) if self.is_moe else (self.mlp(h), {})
        return x + gate_mlp[:, None] * out, stats


class FinalLayer(nn.Module):
    """Weight-only LayerNorm, adaLN shift/scale from c, Linear D -> p*p*C (zero-init, with bias)."""

    def __init__(self, width: int, cond_width: int, out_features: int, eps: float = 1e-6):
        super().__init__()
        self.norm_final = WeightOnlyLayerNorm(width, eps)
        self.adaLN_modulation = AdaLNModulation(cond_width, width, 2)
        self.linear = nn.Linear(width, out_features, bias=True)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c)
        return self.linear(modulate(self.norm_final(x), shift, scale))  # (N, T, p*p*C)
