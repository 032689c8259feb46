"""The stream's order as pure functions: which rows a worker reads, in which order, and how many
of each batch are synthetic. Nothing here touches Ray or the disk, so it is easy to test and a
restarted worker recomputes exactly the same plan.

For one source (real = 0, synthetic = 1), pass ``p`` (an epoch of that source) on rank ``r`` of
``W`` workers:

1. shards: the set's non-empty shards permuted by ``rng(seed, source, p)``; rank ``r`` takes every
   ``W``-th one starting at ``r`` (so in each pass every shard goes to exactly one rank, and
   ranks differ by at most one shard);
2. windows: consecutive shards of that list grouped until a group holds >= ``shuffle_buffer`` rows;
3. rows: inside window ``w`` rows are permuted by ``rng(seed, source, p, r, w)``.

The rank's pass is the concatenation of its windows. A position is ``(pass, offset)``: rows
``[0, offset)`` of pass ``pass`` have been delivered. The synthetic count of a batch follows
Bresenham: after ``n`` rows, exactly ``floor(n * f)`` were synthetic (f an exact fraction), so
any window of k consecutive rows holds ``k * f`` synthetic rows within ±1.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np

SOURCES = ("real", "synthetic")


@dataclass(frozen=True)
class Window:
    """A group of shards read and shuffled together; ``start`` is its first row in the pass."""

    index: int
    files: tuple[str, ...]
    rows: int
    start: int


@dataclass(frozen=True)
class PassPlan:
    """Every window of one source's pass on one rank."""

    source: str
    pass_index: int
    windows: tuple[Window, ...]

    @property
    def rows(self) -> int:
        return sum(w.rows for w in self.windows)

    def window_at(self, offset: int) -> Window:
        """The window holding row ``offset`` of this pass."""
        for window in self.windows:
            if window.start <= offset < window.start + window.rows:
                return window
        raise IndexError(f"offset {offset} outside pass of {self.rows} rows")


def plan_pass(
    shards: list[tuple[str, int]],
    source: str,
    pass_index: int,
    seed: int,
    rank: int,
    world_size: int,
    shuffle_buffer: int,
) -> PassPlan:
    """The windows of ``source``'s pass ``pass_index`` on ``rank`` (see the module docstring)."""
    if len(shards) < world_size:
        raise ValueError(f"{len(shards)} shards cannot feed {world_size} workers")
    order = np.random.default_rng([seed, SOURCES.index(source), pass_index]).permutation(len(shards))
    mine = [shards[i] for i in order[rank::world_size]]
    windows, files, rows, start = [], [], 0, 0
    for name, count in mine:
        files.append(name)
        rows += count
        if rows >= shuffle_buffer:
            windows.append(Window(len(windows), tuple(files), rows, start))
            start, files, rows = start + rows, [], 0
    if files:
        windows.append(Window(len(windows), tuple(files), rows, start))
    return PassPlan(source, pass_index, tuple(windows))


def window_permutation(
    seed: int, source: str, pass_index: int, rank: int, window: int, rows: int
) -> np.ndarray:
    """Row order inside one window: a permutation of ``range(rows)``."""
    return np.random.default_rng([seed, SOURCES.index(source), pass_index, rank, window]).permutation(rows)


def synthetic_rows(rows_before: int, synthetic_before: int, batch_size: int, fraction: Fraction) -> int:
    """Synthetic rows in the next batch, so that after n rows exactly floor(n * f) are synthetic."""
    target = ((rows_before + batch_size) * fraction.numerator) // fraction.denominator
    return min(batch_size, max(0, target - synthetic_before))
