"""Self- and cross-attention with MicroDiT's full-width, non-affine QK-norm (SPEC §1).

QK-norm normalises the projected queries and keys over the whole projected width (all heads
jointly) before splitting into heads, as the official code does; it has no parameters.
``attention_kernel`` pins PyTorch's SDPA backend (flash / memory-efficient / cuDNN / math) for a
forward; "auto" leaves PyTorch's choice (flash on CUDA in bf16 with these shapes: no mask,
head_dim 72 or 64).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from microdit.model.norms import layer_norm

KERNELS = ("auto", "flash", "efficient", "cudnn", "math")


def attention_kernel(name: str) -> contextlib.AbstractContextManager:
    """Context that restricts SDPA to one backend ("auto": PyTorch's own choice, no restriction).

    A pinned backend that cannot run the given inputs raises instead of silently falling back,
    so a benchmark or run that asks for flash really measures flash.
    """
    if name not in KERNELS:
        raise ValueError(f"attention kernel {name!r}: expected one of {', '.join(KERNELS)}")
    if name == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
               "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}[name]
    return sdpa_kernel([backend])


def qk_norm(x: torch.Tensor, eps: float, low_precision: bool = False) -> torch.Tensor:
    """Non-affine LayerNorm over the full projected width (N, T, h) before the head split."""
    return layer_norm(x, None, eps, low_precision)


class SelfAttention(nn.Module):
    """Fused qkv Linear d -> 3 h_qkv, SDPA over h_qkv / head_dim heads, output h_qkv -> d.

    ``qkv_width`` is smaller than d in early backbone blocks under layer-wise scaling.
    """

    def __init__(self, width: int, qkv_width: int, head_dim: int, eps: float = 1e-6, bias: bool = False):
        super().__init__()
        self.head_dim = head_dim
        self.qkv_width = qkv_width
        self.eps = eps
        self.low_precision = False  # QK-norm in the autocast dtype (MicroDiT.set_low_precision_norms)
        self.qkv = nn.Linear(width, 3 * qkv_width, bias=bias)
        self.proj = nn.Linear(qkv_width, width, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)  # 3 x (N, T, h)
        q, k = qk_norm(q, self.eps, self.low_precision), qk_norm(k, self.eps, self.low_precision)
        q, k, v = (rearrange(t, "n t (h e) -> n h t e", e=self.head_dim) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)  # (N, heads, T, e); scale 1/sqrt(head_dim)
        return self.proj(rearrange(out, "n h t e -> n t (h e)"))  # (N, T, d)


class CrossAttention(nn.Module):
    """Image tokens attend to the caption context: q d -> d, kv d -> 2d, out d -> d (always full width)."""

    def __init__(self, width: int, head_dim: int, eps: float = 1e-6, bias: bool = False):
        super().__init__()
        self.head_dim = head_dim
        self.eps = eps
        self.low_precision = False
        self.q_linear = nn.Linear(width, width, bias=bias)
        self.kv_linear = nn.Linear(width, 2 * width, bias=bias)
        self.proj = nn.Linear(width, width, bias=bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        q = qk_norm(self.q_linear(x), self.eps, self.low_precision)  # (N, T, d)
        k, v = self.kv_linear(context).chunk(2, dim=-1)  # 2 x (N, L, d)
        k = qk_norm(k, self.eps, self.low_precision)
        q, k, v = (rearrange(t, "n t (h e) -> n h t e", e=self.head_dim) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)  # (N, heads, T, e)
        return self.proj(rearrange(out, "n h t e -> n t (h e)"))
