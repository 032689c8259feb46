"""Ray actor-pool extraction gives the same statistics as in-process extraction. 8 + 8 images."""

from __future__ import annotations

import time

import numpy as np
import pytest

from microdit.errors import ConfigError
from microdit.evaluate.distributed import distributed_feature_stats, local_feature_stats


def batches(images: np.ndarray, size: int):
    """A lazy stream of uint8 batches, like a generator of samples would yield."""
    for start in range(0, len(images), size):
        yield images[start : start + size]


def test_actor_pool_equals_in_process(ray_local, emoji_set, inception_extractor):
    images = emoji_set[0][40:48]  # (8, 64, 64, 3)
    local = local_feature_stats(batches(images, 3), inception_extractor, total=8)
    remote = distributed_feature_stats(
        batches(images, 3), num_actors=1, num_cpus_per_actor=1, batch_size=4, total=8
    )
    assert remote.count == local.count == 8
    np.testing.assert_allclose(remote.sum, local.sum, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(remote.outer_sum, local.outer_sum, rtol=1e-4, atol=1e-4)
    # Released: no actor of ours is left holding a CPU (ray.kill frees it asynchronously).
    deadline = time.monotonic() + 30
    while ray_local.available_resources().get("CPU", 0) < 2.0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray_local.available_resources().get("CPU", 0) == pytest.approx(2.0)


def test_distributed_needs_a_sane_pool(ray_local):
    with pytest.raises(ConfigError, match="num_actors"):
        distributed_feature_stats(iter([]), num_actors=0)
