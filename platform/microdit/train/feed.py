"""The bridge from the data package's mixed stream to the training loop: batches built ahead.

A training step must never wait for its input. :class:`BatchFeed` builds the next batches on a
background thread while the current step computes, in the stored dtype (fp16: half the bytes to
copy out of the shards and to the device), in page-locked memory on a GPU worker so the host to
device copy is asynchronous (``non_blocking=True`` then really overlaps), and the cast to fp32
happens on the device (:meth:`BatchFeed.to_device`). On a CPU worker the "device" is the host:
the background thread also makes the fp32 copy, so the loop gets ready tensors.

Hand-written rather than a ``torch.utils.data.DataLoader``: the stream is one stateful iterator
whose exact position must be checkpointed after each *consumed* batch (the thread runs ahead),
which a DataLoader's workers cannot report. Each queued batch therefore carries the stream
position right after it, and :meth:`BatchFeed.state_dict` is the position after the last batch
the loop took: a resumed run continues with the very next row, as without prefetching.

``wait_seconds`` accumulates the time the loop spent blocked waiting for a batch (the figure
``benchmark.py train --part feed`` measures, and the loop logs as ``data_wait_s``).
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

import torch

from microdit.config.data import DataMixConfig
from microdit.config.recipe import PhaseConfig

PREFETCH_BATCHES = 2  # micro-batches built ahead: enough to hide a build shorter than a step


def open_stream(data: DataMixConfig, phase: PhaseConfig, rank: int, world: int, micro_batch: int,
                position: Any | None, with_ids: bool = False, device: torch.device | None = None,
                prefetch: int = PREFETCH_BATCHES) -> BatchFeed:
    """This worker's exact-mix stream of ``data`` (the phase's mix) at the phase's resolution, resumed
    at ``position`` and fed ahead for ``device``. ``with_ids`` adds each batch's row ids
    (``debug.record_ids_dir``)."""
    from microdit.data.stream import MixedStream

    device = device or torch.device("cpu")
    stream = MixedStream(data, resolution=phase.resolution, batch_size=micro_batch, rank=rank, world_size=world,
                         state=position, with_ids=with_ids, dtype=torch.float16,
                         pin_memory=device.type == "cuda" and torch.cuda.is_available())
    return BatchFeed(stream, device, prefetch)


class BatchFeed:
    """Iterates a ``MixedStream``'s batches, built ``prefetch`` ahead on a daemon thread (``prefetch=0``:
    built on demand, on the caller's thread, as before this class existed)."""

    def __init__(self, stream, device: torch.device, prefetch: int = PREFETCH_BATCHES,
                 cast_on_host: bool | None = None):
        self.stream, self.device = stream, torch.device(device)
        # no accelerator: the feed thread makes the fp32 copies (None: decided by the device)
        self.cast_on_host = self.device.type == "cpu" if cast_on_host is None else cast_on_host
        self.position = stream.state_dict()  # the stream position after the last batch handed out
        self.wait_seconds = 0.0
        self._stop = threading.Event()
        self._queue: queue.Queue = queue.Queue(maxsize=max(prefetch, 1))
        self._thread: threading.Thread | None = None
        if prefetch > 0:
            self._thread = threading.Thread(target=self._fill, name="microdit-batch-feed", daemon=True)
            self._thread.start()

    # ------------------------------------------------------------------ the feed thread
    def _build(self) -> tuple[dict[str, Any], dict[str, Any]]:
        batch = self.stream.next_batch()
        if self.cast_on_host:
            batch = {k: v.float() if isinstance(v, torch.Tensor) and v.dtype == torch.float16 else v
                     for k, v in batch.items()}
        return batch, self.stream.state_dict()

    def _fill(self) -> None:
        while not self._stop.is_set():
            try:
                item: Any = self._build()
            except BaseException as err:  # noqa: BLE001 - handed to the loop, which raises it
                item = (err, None)
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item[0], BaseException):
                return

    # ------------------------------------------------------------------ the loop's side
    def __iter__(self) -> BatchFeed:
        return self

    def __next__(self) -> dict[str, Any]:
        started = time.perf_counter()
        if self._thread is None:
            batch, position = self._build()
        else:
            batch, position = self._queue.get()
        self.wait_seconds += time.perf_counter() - started
        if isinstance(batch, BaseException):
            raise batch
        self.position = position
        return batch

    def to_device(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(latents (B, C, h, w), caption states (B, L, Dy)) on the device in fp32: an asynchronous
        copy of the stored fp16 (pinned) and a cast there."""
        x0 = batch["latent"].to(self.device, non_blocking=True).float()
        y = batch["text_emb"].to(self.device, non_blocking=True).float()
        return x0, y

    def take_wait_seconds(self) -> float:
        """Seconds the loop waited for batches since the last call."""
        waited, self.wait_seconds = self.wait_seconds, 0.0
        return waited

    def state_dict(self) -> dict[str, Any]:
        """The exact stream position after the last batch the loop took (not the thread's)."""
        return self.position

    def passes(self) -> dict[str, int]:
        return self.stream.passes()

    def close(self) -> None:
        """Stop the feed thread, then the stream's own read-ahead."""
        self._stop.set()
        if self._thread is not None:
            while True:  # unblock a put waiting on a full queue
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    break
            self._thread.join(timeout=30)
        self.stream.close()
