"""Inception feature statistics over a pool of Ray actors, streamed.

Each actor loads the FID Inception once and keeps its own running ``FeatureStats``; batches of
uint8 images are streamed to whichever actor is free, with a bounded number in flight so a
30K-image generator never materialises all images at once. Only at the end does each actor
send back its moments (one 2048x2048 float64 matrix, 32 MiB), and the driver merges them:
raw moments add, so the result equals single-process extraction (up to float32 round-off of
the network on different thread counts).

On a GPU cluster give each actor ``num_gpus=1`` (or a fraction to pack several per GPU); on
this 2-core box the default is one CPU actor, since two would only fight over the cores.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import ray

from microdit.console import Progress
from microdit.errors import ConfigError
from microdit.evaluate.fid import FeatureStats
from microdit.evaluate.inception import InceptionFeatureExtractor

log = logging.getLogger(__name__)


class InceptionStatsActor:
    """A Ray actor holding one Inception network and the running statistics of what it saw."""

    def __init__(self, inception_path: str | None, batch_size: int, num_threads: int, use_gpu: bool):
        import torch

        torch.set_num_threads(max(1, num_threads))
        device = "cuda" if use_gpu else "cpu"  # only when Ray gave this actor a GPU
        self.extractor = InceptionFeatureExtractor(inception_path, batch_size=batch_size, device=device)
        self.stats = FeatureStats.empty()

    def add(self, images: np.ndarray) -> int:
        """Extract features of a uint8 batch (N, H, W, 3) and accumulate; returns N."""
        self.stats.update(self.extractor(images))  # (N, 2048)
        return len(images)

    def result(self) -> FeatureStats:
        return self.stats


def distributed_feature_stats(
    batches: Iterable[np.ndarray],
    *,
    num_actors: int = 1,
    num_cpus_per_actor: float = 1,
    num_gpus_per_actor: float = 0,
    inception_path: str | Path | None = None,
    batch_size: int = 32,
    max_in_flight_per_actor: int = 2,
    total: int | None = None,
    desc: str = "inception",
    progress: bool = False,
) -> FeatureStats:
    """Merged Inception feature statistics of all images in ``batches``, extracted on Ray actors.

    ``batches`` yields image batches in any form ``to_inception_input`` accepts (uint8
    (N, H, W, 3) usually); it is consumed lazily. ``total`` (images) sizes the progress view
    (``progress``: a bar on a terminal, else a line every 30 s and one at the end).
    Needs a running Ray cluster (``ray.init`` done by the caller).
    """
    if num_actors < 1:
        raise ConfigError(f"num_actors: must be >= 1, got {num_actors}")
    if max_in_flight_per_actor < 1:
        raise ConfigError(f"max_in_flight_per_actor: must be >= 1, got {max_in_flight_per_actor}")
    if not ray.is_initialized():
        raise ConfigError("distributed feature extraction needs Ray: call ray.init() (or connect) first")
    remote_cls = ray.remote(num_cpus=num_cpus_per_actor, num_gpus=num_gpus_per_actor)(InceptionStatsActor)
    path = str(inception_path) if inception_path is not None else None
    actors = [
        remote_cls.remote(path, batch_size, max(1, int(num_cpus_per_actor)), num_gpus_per_actor > 0)
        for _ in range(num_actors)
    ]
    in_flight: dict[ray.ObjectRef, ray.actor.ActorHandle] = {}
    idle = list(actors) * max_in_flight_per_actor  # one slot per allowed in-flight batch
    done = 0
    start = time.perf_counter()
    try:
        with Progress(desc, total, "img", enabled=progress) as bar:

            def collect(num_returns: int) -> None:
                nonlocal done
                ready, _ = ray.wait(list(in_flight), num_returns=num_returns)
                for ref in ready:
                    idle.append(in_flight.pop(ref))
                    n = ray.get(ref)
                    done += n
                    bar.update(done)

            for batch in batches:
                if len(batch) == 0:
                    continue
                if not idle:
                    collect(1)
                actor = idle.pop(0)
                in_flight[actor.add.remote(batch)] = actor
            if in_flight:
                collect(len(in_flight))
        parts = ray.get([actor.result.remote() for actor in actors])
    finally:
        for actor in actors:
            ray.kill(actor)
    elapsed = time.perf_counter() - start
    log.log(
        logging.DEBUG if progress else logging.INFO,  # the progress view printed its own summary line
        "%s: %d images in %.1f s = %.2f images/s on %d actor(s)",
        desc,
        done,
        elapsed,
        done / max(elapsed, 1e-9),
        num_actors,
    )
    return FeatureStats.merge_all(parts)


def local_feature_stats(
    batches: Iterable[np.ndarray],
    extractor: InceptionFeatureExtractor,
    *,
    total: int | None = None,
    desc: str = "inception",
    progress: bool = False,
) -> FeatureStats:
    """The same as ``distributed_feature_stats`` in this process, for tests and small sets."""
    stats = FeatureStats.empty()
    start = time.perf_counter()
    with Progress(desc, total, "img", enabled=progress) as bar:
        for batch in batches:
            if len(batch) == 0:
                continue
            stats.update(extractor(batch))  # (N, 2048)
            bar.update(stats.count)
    elapsed = time.perf_counter() - start
    log.log(
        logging.DEBUG if progress else logging.INFO,  # the progress view printed its own summary line
        "%s: %d images in %.1f s = %.2f images/s in-process",
        desc,
        stats.count,
        elapsed,
        stats.count / max(elapsed, 1e-9),
    )
    return stats
