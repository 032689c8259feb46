"""Exponential moving average of the weights, with a half-life measured in images (NVlabs/edm).

The per-step decay follows from the half-life and the global batch: decay = 0.5^(batch/half_life),
so the EMA horizon does not change when the batch size does. SPEC §4's 0.99975 per step at batch
2048 is a half-life of ~5.68M images.
"""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    """Shadow fp32 copy of a model's parameters (buffers are copied, not averaged)."""

    def __init__(self, model: nn.Module):
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()}
        self.updates = 0

    @torch.no_grad()
    def reset(self, model: nn.Module) -> None:
        for key, value in model.state_dict().items():
            self.shadow[key].copy_(value.float())
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float) -> None:
        for key, value in model.state_dict().items():
            shadow = self.shadow[key]
            if value.dtype.is_floating_point:
                shadow.lerp_(value.float(), 1.0 - decay)
            else:
                shadow.copy_(value)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"shadow": self.shadow, "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        for key, value in state["shadow"].items():
            self.shadow[key].copy_(value)
        self.updates = int(state["updates"])
