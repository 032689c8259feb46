"""One source's endless row stream on one worker, read ahead by Ray Data in the background.

``SourceStream`` turns the pure plan of ``microdit.data.plan`` into rows: a daemon thread runs
Ray Data datasets of ``SEGMENT_WINDOWS`` windows each (``from_items`` -> ``map_batches(read_window)``
as Ray tasks with ``read_cpus`` CPUs, at most two in flight, order preserved), regroups the
blocks into whole windows and puts them, with the window's row permutation, into a bounded
queue; ``take(n)`` hands out the next ``n`` rows as ``Piece`` s (a window + row indices) and
advances the position ``(pass, offset)``. The permutation is applied by the consumer's one
unavoidable copy (Arrow buffer -> output tensor, row by row), not by an extra ``take`` in the
Ray task: on a small box every copy of a 166 KB row counts. Ray Data's read-ahead is capped with
``resource_limits.object_store_memory`` (``prefetch_windows + 2`` windows): without it a segment
is read as fast as the CPUs allow, whatever the consumer needs.

Crossing the end of a pass starts the next seeded pass and logs a warning with the number of
times the source's rows have now been repeated.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from microdit.config.data import DataMixConfig
from microdit.data.manifest import Manifest, resolve_set_path
from microdit.data.plan import PassPlan, plan_pass, window_permutation
from microdit.data.schema import tensor_from_arrow
from microdit.errors import ConfigError

log = logging.getLogger(__name__)
SEGMENT_WINDOWS = 64  # windows per Ray Data execution (a new one starts when it is used up)


def read_window(batch: pa.Table, columns: list[str]) -> pa.Table:
    """Ray task: one window item -> its shards' rows (``columns`` only), in file order, unshuffled."""
    files = batch.column("files")[0].as_py()
    return pa.concat_tables([pq.read_table(f, columns=columns) for f in files])


class ReadWindow:
    """A window as read (an Arrow table, possibly several chunks) and its delivery order."""

    def __init__(self, table: pa.Table, order: np.ndarray) -> None:
        self.table, self.order, self.cursor = table, order, 0
        self._views: dict[str, tuple[list[np.ndarray], np.ndarray]] = {}

    @property
    def remaining(self) -> int:
        return len(self.order) - self.cursor

    def views(self, column: str, shape: tuple[int, ...]) -> tuple[list[np.ndarray], np.ndarray]:
        """Zero-copy (n_c, *shape) fp16 views of each chunk of a tensor column, and chunk starts."""
        if column not in self._views:
            chunks = [tensor_from_arrow(c, shape, "float16") for c in self.table.column(column).chunks]
            self._views[column] = (chunks, np.cumsum([0] + [len(c) for c in chunks]))
        return self._views[column]


@dataclass
class Piece:
    """Rows ``order`` of ``window`` (consecutive rows of the stream)."""

    window: ReadWindow
    order: np.ndarray

    @property
    def num_rows(self) -> int:
        return len(self.order)

    def copy_tensor(self, column: str, shape: tuple[int, ...], out: np.ndarray) -> None:
        """out[j] = row order[j] of a tensor column, cast to ``out``'s dtype: one copy per row."""
        chunks, starts = self.window.views(column, shape)
        which = np.searchsorted(starts, self.order, side="right") - 1
        for j, (chunk, row) in enumerate(zip(which.tolist(), (self.order - starts[which]).tolist())):
            out[j] = chunks[chunk][row]

    def column(self, name: str) -> pa.Array:
        """A plain (non-tensor) column for these rows."""
        return self.window.table.column(name).take(pa.array(self.order))


class SourceStream:
    """One source's endless row stream on one rank, from a position, read ahead by Ray Data."""

    def __init__(
        self,
        name: str,
        directory: str,
        manifest: Manifest,
        columns: list[str],
        config: DataMixConfig,
        rank: int,
        world_size: int,
        position: tuple[int, int],
    ) -> None:
        self.name, self.columns, self.config = name, columns, config
        self.rank, self.world_size = rank, world_size
        self.shards = [
            (str(resolve_set_path(directory) / s["file"]), s["rows"]) for s in manifest.data_shards()
        ]
        if len(self.shards) < world_size:
            raise ConfigError(
                f"data.{name}={directory!r} has {len(self.shards)} non-empty shards, fewer than "
                f"{world_size} workers; re-prepare it with a smaller rows_per_shard"
            )
        # upper bound of the bytes a row occupies in the object store (all tensor columns + slack)
        self.row_bytes = sum(int(np.prod(t["shape"])) * 2 for t in manifest.tensors.values()) + 64
        self.pass_index, self.offset = position
        self._plans: dict[int, PassPlan] = {}
        if not 0 <= self.offset <= self.plan(self.pass_index).rows:
            raise ConfigError(
                f"saved data position {position} of {name!r} is outside its pass; "
                "was the set re-prepared since the checkpoint?"
            )
        self._window: ReadWindow | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=config.prefetch_windows)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, name=f"microdit-data-{name}", daemon=True)
        self._thread.start()

    def plan(self, pass_index: int) -> PassPlan:
        if pass_index not in self._plans:
            self._plans = {k: v for k, v in self._plans.items() if k >= pass_index - 1}
            self._plans[pass_index] = plan_pass(
                self.shards,
                self.name,
                pass_index,
                self.config.seed,
                self.rank,
                self.world_size,
                self.config.shuffle_buffer,
            )
        return self._plans[pass_index]

    def _items(self) -> Iterator[dict[str, Any]]:
        """Window items from the current position on, endlessly (crossing passes)."""
        pass_index, offset = self.pass_index, self.offset
        while True:
            plan = self.plan(pass_index)
            for window in plan.windows:
                if window.start + window.rows > offset:
                    skip = max(0, offset - window.start)
                    yield {
                        "files": list(window.files),
                        "pass": pass_index,
                        "window": window.index,
                        "rows": window.rows,
                        "skip": skip,
                    }
            pass_index, offset = pass_index + 1, 0

    def _produce(self) -> None:
        import ray

        try:
            items = self._items()
            while not self._stop.is_set():
                segment = [next(items) for _ in range(SEGMENT_WINDOWS)]
                ds = ray.data.from_items(segment, override_num_blocks=len(segment))
                ds = ds.map_batches(
                    read_window,
                    batch_size=1,
                    batch_format="pyarrow",
                    fn_kwargs={"columns": self.columns},
                    num_cpus=self.config.read_cpus,
                    compute=ray.data.TaskPoolStrategy(size=2),
                )
                options = ds.context.execution_options
                options.preserve_order = True  # our order, not task completion order
                # Bound the read-ahead: without it Ray Data reads the whole segment as fast as it can.
                options.resource_limits = options.resource_limits.copy(
                    object_store_memory=self._read_ahead_bytes()
                )
                ds.context.enable_progress_bars = False
                blocks = iter(ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=1))
                for window in self._regroup(segment, blocks):
                    if not self._put(window):
                        return
        except BaseException as err:  # surfaced in the consumer by take()
            self._put(err)

    def _regroup(self, segment: list[dict[str, Any]], blocks: Iterator[pa.Table]) -> Iterator[ReadWindow]:
        """Blocks (Ray Data may split a task's output) -> whole windows with their delivery order."""
        carry: list[pa.Table] = []
        for item in segment:
            parts, rows = [], 0
            while rows < item["rows"]:
                block = carry.pop() if carry else next(blocks)
                need = item["rows"] - rows
                if block.num_rows > need:
                    carry.append(block.slice(need))
                    block = block.slice(0, need)
                parts.append(block)
                rows += block.num_rows
            order = window_permutation(
                self.config.seed, self.name, item["pass"], self.rank, item["window"], item["rows"]
            )
            yield ReadWindow(pa.concat_tables(parts), order[item["skip"] :])

    def _read_ahead_bytes(self) -> int:
        """Object-store budget of this source's reader: (prefetch_windows + 2) of its largest windows."""
        largest = max(w.rows for w in self.plan(self.pass_index).windows)
        return (self.config.prefetch_windows + 2) * largest * self.row_bytes

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def take(self, n: int) -> list[Piece]:
        """The next ``n`` rows as pieces; advances (and logs) the position."""
        pieces = []
        while n > 0:
            if self._window is None or self._window.remaining == 0:
                item = self._queue.get()
                if isinstance(item, BaseException):
                    raise RuntimeError(f"reading data source {self.name!r} failed") from item
                self._window = item
            window = self._window
            k = min(n, window.remaining, self.plan(self.pass_index).rows - self.offset)
            pieces.append(Piece(window, window.order[window.cursor : window.cursor + k]))
            window.cursor += k
            self.offset += k
            n -= k
            if self.offset == self.plan(self.pass_index).rows:
                self.pass_index, self.offset = self.pass_index + 1, 0
                log.warning(
                    "data source %r: pass %d starts on rank %d; its rows have now been repeated %d time(s)",
                    self.name,
                    self.pass_index,
                    self.rank,
                    self.pass_index,
                )
        return pieces

    def close(self) -> None:
        """Stop reading ahead; the thread ends (and Ray Data shuts its executor down) at its next check."""
        self._stop.set()
        self._thread.join(timeout=1)
