"""Random patch masking (SPEC §1 step 6) and the zero refill of dropped positions (step 10).

Masks come from an explicit ``torch.Generator`` so a run is reproducible; callers can also
pass keep-indices directly (tests, evaluation of a fixed mask).
"""

from __future__ import annotations

import torch


def num_kept(num_tokens: int, mask_ratio: float) -> int:
    """floor(T * (1 - r)) tokens survive the drop."""
    return int(num_tokens * (1 - mask_ratio))


def random_keep_indices(
    batch: int,
    num_tokens: int,
    mask_ratio: float,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Per sample, keep the first floor(T(1-r)) tokens of argsort(uniform noise): (N, T_keep), sorted.

    The noise is drawn on the generator's device and moved, so a CPU generator works for GPU inputs.
    """
    gen_device = generator.device if generator is not None else device
    noise = torch.rand(batch, num_tokens, generator=generator, device=gen_device)  # (N, T)
    keep = noise.argsort(dim=1)[:, : num_kept(num_tokens, mask_ratio)]
    return keep.sort(dim=1).values.to(device)  # sorted: kept tokens stay in raster order


def gather_tokens(x: torch.Tensor, keep_idx: torch.Tensor) -> torch.Tensor:
    """(N, T, D), (N, K) -> (N, K, D)."""
    return torch.gather(x, 1, keep_idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def refill_zeros(kept: torch.Tensor, keep_idx: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Put kept tokens (N, K, F) back at their positions of a zero (N, T, F) tensor."""
    full = kept.new_zeros(kept.shape[0], num_tokens, kept.shape[-1])
    return full.scatter(1, keep_idx.unsqueeze(-1).expand(-1, -1, kept.shape[-1]), kept)


def drop_mask(keep_idx: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """(N, T) float mask with 1 = dropped, 0 = kept."""
    mask = torch.ones(keep_idx.shape[0], num_tokens, device=keep_idx.device)
    return mask.scatter(1, keep_idx, 0.0)
