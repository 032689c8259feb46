"""Dense SwiGLU feed-forward (SPEC §1): out = W3(SiLU(W1 x) * W2 x)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SwiGLU(nn.Module):
    """SwiGLU with hidden = round_up(int(2/3 * int(d * ratio)), multiple_of), computed by the caller."""

    def __init__(self, width: int, hidden: int, bias: bool = False):
        super().__init__()
        self.w1 = nn.Linear(width, hidden, bias=bias)
        self.w2 = nn.Linear(width, hidden, bias=bias)
        self.w3 = nn.Linear(hidden, width, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w3(F.silu(self.w1(x)) * self.w2(x))  # (N, T, d)
