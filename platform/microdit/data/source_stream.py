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

Small sources skip Ray Data: when a source's needed columns fit in ``IN_MEMORY_MAX_BYTES``
(rows x bytes per row of those columns; the demo sets are ~0.1 GB), ``take`` builds each window
itself from the shard files, each read once per worker process with ``pyarrow`` and kept in a
process-wide cache (``_SHARD_CACHE``, which also outlives the stream, so the next phase of the
run starts instantly). Windows, permutations and positions are exactly those of the Ray Data
path (same files in the same order, same seeded permutation), so the order stays a pure function
of the config and a checkpoint taken in either mode resumes in the other. Why: a Ray Data
execution costs seconds to start, and while it runs its scheduling and prefetch threads share the
worker's cores and GIL with the training step (measured on the 2-core demo box: a Nano_4 step at
batch 16 took 425 ms with the two sources' executions open, 120 ms without).

Shards are read with pyarrow through ``microdit.storage``, so a set may live on a local or shared
disk or on an object store (``s3://``). Data locality: the Ray Data read tasks are soft-pinned to
the consuming worker's node (``NodeAffinitySchedulingStrategy(node_id=<this node>, soft=True)``
passed to ``map_batches``, which Ray 2.60 forwards to every ``TaskPoolStrategy`` task), so a
window is read where it is consumed, not on an arbitrary node and then shipped over the network;
Ray places a task elsewhere only when this node has no free CPU for it. (Ray 2.60 accepts it as a
``**ray_remote_args`` entry with a ``RayDeprecationWarning``: those are to go in Ray 2.64, whose
named ``label_selector`` / ``fallback_strategy`` parameters would then express the same.)

Crossing the end of a pass starts the next seeded pass and logs the number of times the
source's rows have now been repeated (a warning the first time, on rank 0; info afterwards).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from microdit import storage
from microdit.config.data import DataMixConfig
from microdit.data.manifest import Manifest, resolve_set_path
from microdit.data.plan import PassPlan, plan_pass, window_permutation
from microdit.data.schema import read_shard, tensor_from_arrow
from microdit.errors import ConfigError

log = logging.getLogger(__name__)
SEGMENT_WINDOWS = 64  # windows per Ray Data execution (a new one starts when it is used up)
# A source whose needed columns take at most this many bytes is served from memory (module docstring).
IN_MEMORY_MAX_BYTES = 512 * 2**20
# The process-wide shard cache holds at most this many bytes (least recently used shards go first).
CACHE_MAX_BYTES = 2 * IN_MEMORY_MAX_BYTES


class ShardCache:
    """Shard tables (needed columns only) read once per process, keyed by file identity and columns."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._tables: OrderedDict[tuple, pa.Table] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, location: str, columns: list[str]) -> pa.Table:
        # a re-prepared shard (new size or mtime) is read again
        key = (location, tuple(columns), *storage.file_stamp(location))
        with self._lock:
            table = self._tables.get(key)
            if table is not None:
                self._tables.move_to_end(key)
                return table
        table = read_shard(location, columns)
        with self._lock:
            if key not in self._tables:
                self._tables[key] = table
                self._bytes += table.nbytes
            while self._bytes > self.max_bytes and len(self._tables) > 1:
                _, old = self._tables.popitem(last=False)
                self._bytes -= old.nbytes
        return table

    def clear(self) -> None:
        with self._lock:
            self._tables.clear()
            self._bytes = 0


_SHARD_CACHE = ShardCache(CACHE_MAX_BYTES)


def read_window(batch: pa.Table, columns: list[str]) -> pa.Table:
    """Ray task: one window item -> its shards' rows (``columns`` only), in file order, unshuffled."""
    files = batch.column("files")[0].as_py()
    return pa.concat_tables([read_shard(f, columns) for f in files])


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
    """One source's endless row stream on one rank, from a position: read ahead by Ray Data, or
    served from memory when the source is small (``in_memory``; module docstring)."""

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
        in_memory_max_bytes: int | None = None,
    ) -> None:
        self.name, self.columns, self.config = name, columns, config
        self.rank, self.world_size = rank, world_size
        location = resolve_set_path(directory)
        self.shards = [(storage.join(location, s["file"]), s["rows"]) for s in manifest.data_shards()]
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
        # bytes of the columns this stream reads, whole set (what the in-memory path would hold)
        needed_row_bytes = (
            sum(
                int(np.prod(t["shape"])) * np.dtype(t.get("dtype", "float16")).itemsize
                for col, t in manifest.tensors.items()
                if col in columns
            )
            + 64
        )
        self.needed_bytes = needed_row_bytes * sum(rows for _, rows in self.shards)
        limit = IN_MEMORY_MAX_BYTES if in_memory_max_bytes is None else in_memory_max_bytes
        self.in_memory = self.needed_bytes <= limit
        self._thread: threading.Thread | None = None
        self._memory_windows: Iterator[ReadWindow] | None = None
        if self.in_memory:
            self._memory_windows = self._read_from_memory()
        else:
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
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        # read where the rows are consumed (module docstring); soft: elsewhere when this node is full
        here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=True)
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
                    scheduling_strategy=here,
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

    def _read_from_memory(self) -> Iterator[ReadWindow]:
        """The in-memory path: the same windows as the Ray Data path, built from cached shards."""
        for item in self._items():
            table = pa.concat_tables([_SHARD_CACHE.get(f, self.columns) for f in item["files"]])
            if table.num_rows != item["rows"]:
                raise ConfigError(
                    f"data.{self.name}: window {item['window']} of pass {item['pass']} has "
                    f"{table.num_rows} rows on disk but the manifest says {item['rows']}; re-prepare the set"
                )
            yield ReadWindow(table, self._order(item))

    def _order(self, item: dict[str, Any]) -> np.ndarray:
        """The delivery order of a window item: its seeded permutation, minus the rows already delivered."""
        order = window_permutation(
            self.config.seed, self.name, item["pass"], self.rank, item["window"], item["rows"]
        )
        return order[item["skip"] :]

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
            yield ReadWindow(pa.concat_tables(parts), self._order(item))

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
                self._window = self._next_window()
            window = self._window
            k = min(n, window.remaining, self.plan(self.pass_index).rows - self.offset)
            pieces.append(Piece(window, window.order[window.cursor : window.cursor + k]))
            window.cursor += k
            self.offset += k
            n -= k
            if self.offset == self.plan(self.pass_index).rows:
                self.pass_index, self.offset = self.pass_index + 1, 0
                # a warning the first time rows repeat (rank 0 speaks for all); later passes: info
                first = self.pass_index == 1 and self.rank == 0
                log.log(
                    logging.WARNING if first else logging.INFO,
                    "data source %r: pass %d starts on rank %d; its rows have now been repeated %d time(s)",
                    self.name,
                    self.pass_index,
                    self.rank,
                    self.pass_index,
                )
        return pieces

    def _next_window(self) -> ReadWindow:
        if self._memory_windows is not None:
            try:
                return next(self._memory_windows)
            except ConfigError:
                raise
            except Exception as err:
                raise RuntimeError(f"reading data source {self.name!r} failed") from err
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise RuntimeError(f"reading data source {self.name!r} failed") from item
        return item

    def close(self) -> None:
        """Stop reading ahead; the thread ends (and Ray Data shuts its executor down) at its next check."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1)
