"""Benchmark: how long the training loop waits for its input batch per step, before and after ``BatchFeed``.

``python jobs/benchmark.py train --part feed [--feed-batch 256] [--feed-step-ms 250] [--feed-steps 20]
[--feed-warmup 4] [--feed-source stream|memory] [--repeats 3]``

Rows are shaped like the paper recipe's (``benchmarks.data.write_set``: a 4x32x32 fp16 latent and
77x1024 fp16 caption states, ~166 KB a row), one micro-batch of ``--feed-batch`` rows per step. The
step itself is the training thread blocked for ``--feed-step-ms`` (what a GPU worker's loop does
while the device computes; on this CPU box a real step would fight the feed thread for the two
cores and measure the box, not the feed). Three feeds run alternately ``--repeats`` times:

- **before**: the loop as it was: ``MixedStream`` building fp32 batches on the training thread,
  synchronously, at each step (the wait is the whole build);
- **after (GPU worker)**: ``train.feed.BatchFeed`` over the fp16 stream (the stored dtype, pinned on
  a GPU node), built ahead on its thread; the fp32 cast then runs on the device;
- **after (CPU worker)**: the same, with the feed thread also making the fp32 copies.

Reported per feed: the median wait per step over the steady steps (after ``--feed-warmup``), its
mean, and the build time per batch; and the ratio after / before. ``--feed-source stream`` reads
through Ray Data (the path a set too large for memory takes, as the paper's 7 TB); ``memory``
serves the set from memory (small sets).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from microdit.config.data import DataMixConfig


def add_arguments(parser) -> None:
    parser.add_argument("--feed-batch", type=int, default=256, help="part feed: rows per micro-batch (paper: 256)")
    parser.add_argument("--feed-step-ms", type=float, default=250.0, help="part feed: simulated step time")
    parser.add_argument("--feed-steps", type=int, default=20, help="part feed: timed steps per run")
    parser.add_argument("--feed-warmup", type=int, default=4, help="part feed: untimed steps first")
    parser.add_argument("--feed-source", choices=("stream", "memory"), default="stream",
                        help="part feed: Ray Data reads (large sets) or the in-memory path (small sets)")


def _stream(directory: Path, batch: int, dtype: torch.dtype, source: str):
    from microdit.data.stream import MixedStream

    config = DataMixConfig(real=str(directory), synthetic_fraction=0.0, shuffle_buffer=batch, seed=0)
    return MixedStream(config, resolution=256, batch_size=batch, dtype=dtype,
                       in_memory_max_bytes=0 if source == "stream" else None)


def run_feed(kind: str, directory: Path, args) -> dict[str, Any]:
    """One run of ``kind`` (before / after_gpu / after_cpu): waits per step (s) and build times (s)."""
    from microdit.train.feed import BatchFeed

    step_s = args.feed_step_ms / 1000
    waits: list[float] = []
    builds: list[float] = []
    if kind == "before":
        stream = _stream(directory, args.feed_batch, torch.float32, args.feed_source)
        for _ in range(args.feed_warmup + args.feed_steps):
            started = time.perf_counter()
            stream.next_batch()
            waits.append(time.perf_counter() - started)
            time.sleep(step_s)
        stream.close()
        builds = waits
    else:
        stream = _stream(directory, args.feed_batch, torch.float16, args.feed_source)
        timed = _TimedStream(stream, builds)
        feed = BatchFeed(timed, torch.device("cpu"), cast_on_host=kind == "after_cpu")
        for _ in range(args.feed_warmup + args.feed_steps):
            next(feed)
            waits.append(feed.take_wait_seconds())
            time.sleep(step_s)
        feed.close()
    steady = waits[args.feed_warmup:]
    return {"wait_median_s": statistics.median(steady), "wait_mean_s": statistics.fmean(steady),
            "build_median_s": statistics.median(builds[args.feed_warmup:] or builds)}


class _TimedStream:
    """Passes a stream through, timing each batch build (on the feed thread)."""

    def __init__(self, stream, builds: list[float]):
        self.stream, self.builds = stream, builds

    def next_batch(self) -> dict[str, Any]:
        started = time.perf_counter()
        batch = self.stream.next_batch()
        self.builds.append(time.perf_counter() - started)
        return batch

    def state_dict(self) -> dict[str, Any]:
        return self.stream.state_dict()

    def passes(self) -> dict[str, int]:
        return self.stream.passes()

    def close(self) -> None:
        self.stream.close()


def main(args) -> dict[str, float]:
    """Part ``feed`` of ``benchmark.py train``; returns the median waits per feed (s)."""
    from microdit.benchmarks.data import ROW_BYTES, write_set

    rows = args.feed_batch * 8  # the stream wraps around: enough for distinct windows, not 1 GB of disk
    kinds = ("before", "after_gpu", "after_cpu")
    print(f"feed: {args.feed_batch} rows per step of ~{ROW_BYTES / 1e3:.0f} KB (paper shapes), "
          f"{args.feed_step_ms:g} ms simulated step, {args.feed_steps} timed steps after {args.feed_warmup}, "
          f"{args.feed_source} source, {args.repeats} alternating runs each")
    results: dict[str, list[dict[str, Any]]] = {kind: [] for kind in kinds}
    with tempfile.TemporaryDirectory(prefix="microdit-bench-feed-") as tmp:
        directory = write_set(Path(tmp) / "feed_real", "real", rows, rows_per_shard=args.feed_batch, seed=0)
        for _ in range(args.repeats):
            for kind in kinds:
                results[kind].append(run_feed(kind, directory, args))
    label = {"before": "before (fp32, built on the step)", "after_gpu": "after, GPU worker (fp16, ahead)",
             "after_cpu": "after, CPU worker (fp32 copy, ahead)"}
    print(f"{'feed':<38}{'wait/step median':>18}{'wait/step mean':>16}{'build/batch':>13}")
    medians = {}
    for kind in kinds:
        runs = results[kind]
        medians[kind] = statistics.median(r["wait_median_s"] for r in runs)
        mean = statistics.median(r["wait_mean_s"] for r in runs)
        build = statistics.median(r["build_median_s"] for r in runs)
        print(f"{label[kind]:<38}{medians[kind] * 1e3:>15.2f} ms{mean * 1e3:>13.2f} ms{build * 1e3:>10.1f} ms")
    before = medians["before"]
    for kind in kinds[1:]:
        print(f"  {label[kind]}: waits {medians[kind] / before:.2e} x the old loop's wait "
              f"({before * 1e3:.1f} ms -> {medians[kind] * 1e3:.3f} ms per step)")
    return medians
