"""``train.feed.BatchFeed``: batches built ahead on a thread are the stream's batches, and the
position it reports is the one after the last batch the loop *took*, so resume stays exact.

A real prepared set (``write_pixel_set``: 24 rows, served from memory) streamed by a real
``MixedStream``; no Ray needed.
"""

from __future__ import annotations

import sys
import time
from itertools import islice
from pathlib import Path

import pytest
import torch

from microdit.config.data import DataMixConfig
from microdit.data.stream import MixedStream
from microdit.train.feed import BatchFeed

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "evaluate"))
from eval_testing import write_pixel_set  # noqa: E402

BATCH = 4


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> DataMixConfig:
    directory = write_pixel_set(tmp_path_factory.mktemp("feed") / "set", rows=24, sizes=(16,))
    return DataMixConfig(real=str(directory), synthetic_fraction=0.0, shuffle_buffer=8, seed=1)


def _stream(config, dtype, state=None) -> MixedStream:
    return MixedStream(config, resolution=16, batch_size=BATCH, dtype=dtype, state=state, with_ids=True)


@pytest.mark.parametrize("device_kind", ["cpu", "gpu"])
def test_feed_gives_the_streams_batches_and_the_consumed_position(config, device_kind):
    """8 batches (the 24 rows wrap into a second pass) equal the plain fp32 stream's; after each one the
    feed's position is the plain stream's position after as many batches, while its thread is ahead."""
    plain = _stream(config, torch.float32)
    expected = [(plain.next_batch(), plain.state_dict()) for _ in range(8)]
    feed = BatchFeed(_stream(config, torch.float16), torch.device("cpu"), prefetch=2,
                     cast_on_host=device_kind == "cpu")
    assert feed.state_dict() == _stream(config, torch.float32).state_dict()  # nothing taken yet
    for step, (want, position) in enumerate(expected):
        got = next(feed)
        # a GPU worker's feed keeps the stored fp16 (the device casts); a CPU worker's hands out fp32
        assert got["latent"].dtype == (torch.float32 if device_kind == "cpu" else torch.float16)
        x0, y = feed.to_device(got)
        assert x0.dtype == y.dtype == torch.float32
        assert torch.equal(x0, want["latent"]) and torch.equal(y, want["text_emb"])  # fp16 -> fp32 is exact
        assert got["id"] == want["id"]
        assert feed.state_dict() == position, step
    deadline = time.monotonic() + 10
    while feed.stream.state_dict()["rows"] <= expected[-1][1]["rows"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert feed.stream.state_dict()["rows"] > expected[-1][1]["rows"]  # the thread builds ahead
    assert feed.state_dict() == expected[-1][1]  # ... and the reported position did not move
    resumed = BatchFeed(_stream(config, torch.float16, state=feed.state_dict()), torch.device("cpu"))
    assert next(resumed)["id"] == plain.next_batch()["id"]  # resume continues with the very next rows
    for each in (feed, resumed, plain):
        each.close()


def test_feed_waits_are_counted_and_taken():
    """Without prefetching the whole build is a wait; the counter resets when read."""

    class Counting:
        rows = 0

        def next_batch(self):
            self.rows += 1
            return {"latent": torch.zeros(1), "text_emb": torch.zeros(1)}

        def state_dict(self):
            return {"rows": self.rows}

        def close(self):
            pass

    feed = BatchFeed(Counting(), torch.device("cpu"), prefetch=0)
    list(islice(feed, 3))
    assert feed.state_dict() == {"rows": 3}
    assert feed.take_wait_seconds() > 0 and feed.take_wait_seconds() == 0.0


def test_an_error_on_the_feed_thread_reaches_the_loop(config):
    class Broken:
        def next_batch(self):
            raise OSError("shard 7 unreadable")

        def state_dict(self):
            return {}

        def close(self):
            pass

    feed = BatchFeed(Broken(), torch.device("cpu"), prefetch=2)
    with pytest.raises(OSError, match="shard 7 unreadable"):
        next(feed)
    feed.close()
