"""What a MicroDiT forward returns: the prediction, which patches were dropped, router stats."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class MicroDiTOutput:
    """Result of ``MicroDiT.forward``.

    sample:   (N, C, H, W) network prediction F(c_in·x, c_noise, y); dropped patches are zero.
    mask:     (N, T) float, 1 = patch dropped before the backbone, 0 = kept; ``None`` when no
              patch was dropped (r = 0 or masking ``none``). T = (H/p)·(W/p).
    keep_idx: (N, T_keep) long indices of kept patches, ``None`` when nothing was dropped.
    patch_size: p, so the loss can pool per patch.
    router_stats: scalar tensors for logging (``router/unrouted_frac``, ``router/experts_per_token``,
              ``router/load_e{i}``...), averaged over MoE layers; empty for dense models.
    """

    sample: torch.Tensor
    mask: torch.Tensor | None
    keep_idx: torch.Tensor | None
    patch_size: int
    router_stats: dict[str, torch.Tensor] = field(default_factory=dict)
