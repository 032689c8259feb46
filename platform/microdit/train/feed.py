"""The bridge from the data package's mixed stream to the training loop (one call per phase)."""

from __future__ import annotations

from typing import Any

from microdit.config.data import DataMixConfig
from microdit.config.recipe import PhaseConfig


def open_stream(data: DataMixConfig, phase: PhaseConfig, rank: int, world: int, micro_batch: int,
                position: Any | None, with_ids: bool = False):
    """This worker's exact-mix stream of ``data`` (the phase's mix) at the phase's resolution, resumed
    at ``position``.
    ``with_ids`` adds each batch's row ids (``debug.record_ids_dir``)."""
    from microdit.data.stream import MixedStream

    return MixedStream(data, resolution=phase.resolution, batch_size=micro_batch, rank=rank,
                       world_size=world, state=position, with_ids=with_ids)
