"""Input embeddings of MicroDiT: patches, fixed 2D sin-cos positions, noise level, captions.

SPEC §1 steps 1–4. The caption path produces both the cross-attention context and a pooled
vector that is added to the timestep embedding (MicroDiT's conditioning vector c).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from microdit.config.model import round_up
from microdit.model.attention import SelfAttention
from microdit.model.feedforward import SwiGLU
from microdit.model.norms import WeightOnlyLayerNorm


class PatchEmbed(nn.Module):
    """Conv2d with kernel = stride = p: (N, C, H, W) -> (N, T, D), tokens in row-major order."""

    def __init__(self, patch_size: int, in_channels: int, width: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, width, kernel_size=patch_size, stride=patch_size, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (N, T, D)


def sincos_pos_embed_2d(width: int, grid_h: int, grid_w: int, scale: float) -> torch.Tensor:
    """MAE-style fixed 2D table (T, D): first D/2 channels encode the column, last D/2 the row.

    Coordinates are arange(g) / scale so a 512 px grid (scale 2) spans the 256 px range.
    Within each half: D/4 sines then D/4 cosines of pos * omega_k, omega_k = 10000^(-k/(D/4)).
    Computed in float64 like the reference NumPy implementation, returned as float32.
    """
    quarter = width // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)  # (D/4,)
    rows = torch.arange(grid_h, dtype=torch.float64) / scale
    cols = torch.arange(grid_w, dtype=torch.float64) / scale
    row_pos, col_pos = torch.meshgrid(rows, cols, indexing="ij")  # (gh, gw)

    def half(pos: torch.Tensor) -> torch.Tensor:
        angles = pos.reshape(-1, 1) * omega  # (T, D/4)
        return torch.cat([angles.sin(), angles.cos()], dim=1)  # (T, D/2)

    return torch.cat([half(col_pos), half(row_pos)], dim=1).float()  # (T, D)


class TimestepEmbedder(nn.Module):
    """c_noise -> D: 512 sinusoidal features ([cos, sin], no x1000) -> Linear -> GELU(tanh) -> Linear."""

    def __init__(self, width: int, freq_dim: int = 512):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(
            nn.Linear(freq_dim, width, bias=True),
            nn.GELU(approximate="tanh"),
            nn.Linear(width, width, bias=True),
        )

    def sinusoidal(self, c_noise: torch.Tensor) -> torch.Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(
            -math.log(10000) * torch.arange(half, dtype=torch.float32, device=c_noise.device) / half
        )
        args = c_noise.float()[:, None] * freqs[None]  # (N, 256)
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (N, 512)

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        features = self.sinusoidal(c_noise).to(self.mlp[0].weight.dtype)
        return self.mlp(features)  # (N, D)


class Mlp(nn.Module):
    """Linear -> GELU(tanh) -> weight-only LayerNorm -> Linear, linears with biases (timm layout)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, eps: float = 1e-6):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden, bias=True)
        self.act = nn.GELU(approximate="tanh")
        self.norm = WeightOnlyLayerNorm(hidden, eps)
        self.fc2 = nn.Linear(hidden, out_dim, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.norm(self.act(self.fc1(x))))


class CaptionEmbedder(nn.Module):
    """Projects per-token caption states Dy -> D (an ``Mlp`` named ``y_proj`` as in the official code)."""

    def __init__(self, caption_dim: int, width: int, eps: float):
        super().__init__()
        self.y_proj = Mlp(caption_dim, width, width, eps)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.y_proj(y)  # (N, L, D)


class CaptionBlock(nn.Module):
    """One pre-norm transformer block over caption tokens (no conditioning).

    Output projections start at zero so the block is the identity at initialisation.
    """

    def __init__(self, width: int, head_dim: int, multiple_of: int, eps: float, bias: bool):
        super().__init__()
        hidden = round_up(int(2 / 3 * int(width * 4.0)), multiple_of)
        self.norm1 = WeightOnlyLayerNorm(width, eps)
        self.attn = SelfAttention(width, width, head_dim, eps=eps, bias=bias)
        self.norm2 = WeightOnlyLayerNorm(width, eps)
        self.mlp = SwiGLU(width, hidden, bias=bias)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        y = y + self.attn(self.norm1(y))  # (N, L, D)
        return y + self.mlp(self.norm2(y))
