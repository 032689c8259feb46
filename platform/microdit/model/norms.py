"""LayerNorm variants used by MicroDiT (SPEC §1: block norms have a weight and no bias).

Every norm (block norms, width maps, caption path, the weight-less QK-norm) can run in the
autocast dtype instead of fp32: the official recipe's ``low_precision_layernorm`` (composer's
``LPLayerNorm``), which saves an fp32 copy of every normed activation on GPU. Off by default, so
the network's numerics stay those of PyTorch's autocast policy; ``MicroDiT.set_low_precision_norms``
switches the whole model. Hand-written because PyTorch has no switch for it (autocast always
runs ``layer_norm`` in fp32 on CUDA).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def layer_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float, low_precision: bool) -> torch.Tensor:
    """LayerNorm over the last dim; with ``low_precision`` under autocast, in the autocast dtype."""
    device_type = x.device.type
    if low_precision and torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        with torch.autocast(device_type, enabled=False):
            return F.layer_norm(
                x.to(dtype), (x.shape[-1],), None if weight is None else weight.to(dtype), eps=eps
            )
    return F.layer_norm(x, (x.shape[-1],), weight, eps=eps)


class WeightOnlyLayerNorm(nn.LayerNorm):
    """LayerNorm with a learnable scale and no bias (every norm in MicroDiT, eps 1e-6)."""

    def __init__(self, width: int, eps: float = 1e-6):
        super().__init__(width, eps=eps, bias=False)
        self.low_precision = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return layer_norm(x, self.weight, self.eps, self.low_precision)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x * (1 + scale) + shift, with (N, D) shift/scale broadcast over tokens."""
    return x * (1 + scale[:, None]) + shift[:, None]
