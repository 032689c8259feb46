"""Evaluation split over the ranks of a training run: each rank its share, merged exactly.

During training every rank takes a contiguous share of the evaluation samples
(``shard_range``), generates them on its own device (each sample from its own seeded noise, so
the images are those one process would make) and extracts Inception features. The feature
moments are then summed over ranks (``all_reduce_stats``: count, Σf and Σffᵀ in float64, the
merge ``FeatureStats`` already does), so the FID equals the single-process one up to float
round-off; the rows (for the resampled FID uncertainty) and the first images (for the sample
grid) are gathered in index order. A missing reference cache is built the same way, each rank
its share of the reference (``microdit.evaluate.reference.decoded_reference_stats``). Works on any
``torch.distributed`` backend (NCCL on GPUs, gloo on CPU, which the tests use); with
``world == 1`` nothing is communicated.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from microdit.errors import ConfigError
from microdit.evaluate.fid import FeatureStats


def shard_range(total: int, rank: int, world: int) -> range:
    """Rank ``rank``'s contiguous share of ``total`` items (sizes differ by at most one)."""
    base, extra = divmod(total, world)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


def _distributed(world: int) -> bool:
    return world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()


def require_process_group(world: int) -> None:
    """Refuse ``world`` > 1 outside a process group: each rank would keep its share as the whole."""
    if world > 1 and not _distributed(world):
        raise ConfigError(f"world={world}: a sharded evaluation needs an initialised torch.distributed process "
                          "group on every rank (or world=1)")


def _device() -> torch.device:
    """The tensor device collectives need: the current GPU under NCCL, else the CPU."""
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_stats(stats: FeatureStats, world: int) -> FeatureStats:
    """The sum of every rank's statistics, on every rank (exact: float64 moments add)."""
    if not _distributed(world):
        return stats
    device = _device()
    count = torch.tensor([float(stats.count)], dtype=torch.float64, device=device)
    total = torch.from_numpy(stats.sum).to(device)  # (D,)
    outer = torch.from_numpy(stats.outer_sum).to(device)  # (D, D)
    for tensor in (count, total, outer):
        torch.distributed.all_reduce(tensor)
    return FeatureStats(int(count.item()), total.cpu().numpy(), outer.cpu().numpy())


def all_reduce_sum(value: float, world: int) -> float:
    if not _distributed(world):
        return float(value)
    tensor = torch.tensor([float(value)], dtype=torch.float64, device=_device())
    torch.distributed.all_reduce(tensor)
    return float(tensor.item())


def gather_in_order(part: Any, world: int) -> list[Any]:
    """Every rank's ``part``, in rank order (= sample order for ``shard_range`` shares)."""
    if not _distributed(world):
        return [part]
    parts: list[Any] = [None] * world
    torch.distributed.all_gather_object(parts, part)
    return parts


def barrier(world: int) -> None:
    if _distributed(world):
        torch.distributed.barrier()


def gather_first_images(images: np.ndarray, first_index: int, count: int, world: int) -> np.ndarray:
    """Samples [0, count) assembled from the ranks that hold them (for the sample grid)."""
    mine = images[: max(0, count - first_index)]  # the ones below ``count`` this rank holds
    parts = [p for p in gather_in_order(mine, world) if len(p)]
    return np.concatenate(parts)[:count] if parts else images[:0]
