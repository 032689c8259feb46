"""LayerNorm variants used by MicroDiT (SPEC §1: block norms have a weight and no bias)."""

from __future__ import annotations

import torch
from torch import nn


def WeightOnlyLayerNorm(width: int, eps: float = 1e-6) -> nn.LayerNorm:  # noqa: N802 (a layer factory)
    """LayerNorm with a learnable scale and no bias (every norm in MicroDiT, eps 1e-6)."""
    return nn.LayerNorm(width, eps=eps, bias=False)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x * (1 + scale) + shift, with (N, D) shift/scale broadcast over tokens."""
    return x * (1 + scale[:, None]) + shift[:, None]
