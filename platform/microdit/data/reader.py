"""Read a whole prepared set into memory: for evaluation, inspection and tests.

Training never uses this (it streams with ``microdit.data.stream.MixedStream``); evaluation
needs captions, ids and reference latents of a held-out set, which fit in memory.

``read_set(path, columns=None, resolution=None)`` returns a dict:

- ``latents``   (N, C, h, w) float16 at ``resolution`` (default: the set's first resolution)
- ``text_emb``  (N, L, Dy) float16 per-token caption states
- ``text_len``  (N,) int16 and ``text_mask`` (N, L) bool (True = real token)
- ``caption``, ``id``, ``source``, ``dataset``: lists of str; ``width``, ``height``: (N,) int32

``columns`` restricts the keys (e.g. ``["caption", "id"]`` reads no tensors at all). Rows come
in shard order, then row order. ``path`` is a set reference (``resolve_set_path``): a local
directory, an object-store URI or a bare name; shards are read with pyarrow through
``microdit.storage``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from microdit import storage
from microdit.data.manifest import load_manifest, resolve_set_path
from microdit.data.schema import (
    CAPTION,
    DATASET,
    HEIGHT,
    ID,
    SOURCE,
    TEXT_EMB,
    TEXT_LEN,
    WIDTH,
    latent_column,
    read_shard,
    tensor_from_arrow,
)
from microdit.errors import ConfigError

KEYS = (
    "latents",
    "text_emb",
    "text_len",
    "text_mask",
    "caption",
    "id",
    "source",
    "dataset",
    "width",
    "height",
)
_STRING_KEYS = {"caption": CAPTION, "id": ID, "source": SOURCE, "dataset": DATASET}


def read_set(
    path: str | os.PathLike, columns: list[str] | None = None, resolution: int | None = None,
    max_rows: int | None = None,
) -> dict[str, Any]:
    """Every row of a prepared set as numpy arrays / lists (see the module docstring); with
    ``max_rows``, only the first rows, read row group by row group (never a full scan)."""
    directory = resolve_set_path(path)
    manifest = load_manifest(directory)
    wanted = list(KEYS) if columns is None else list(columns)
    unknown = sorted(set(wanted) - set(KEYS))
    if unknown:
        raise ConfigError(f"read_set columns {unknown} unknown; allowed: {list(KEYS)}")
    res = manifest.resolutions[0] if resolution is None else int(resolution)
    latent_col = latent_column(res)
    if "latents" in wanted and latent_col not in manifest.tensors:
        raise ConfigError(f"set {directory} has no latents at {res} px; it has {manifest.resolutions}")

    arrow_cols = set()
    for key in wanted:
        if key == "latents":
            arrow_cols.add(latent_col)
        elif key in ("text_len", "text_mask"):
            arrow_cols.add(TEXT_LEN)
        elif key in _STRING_KEYS:
            arrow_cols.add(_STRING_KEYS[key])
        else:
            arrow_cols.add({"text_emb": TEXT_EMB, "width": WIDTH, "height": HEIGHT}[key])

    if max_rows is None:
        tables = [
            read_shard(storage.join(directory, s["file"]), sorted(arrow_cols)) for s in manifest.data_shards()
        ]
    else:
        tables = _first_rows(directory, manifest.data_shards(), sorted(arrow_cols), max_rows)
    table = pa.concat_tables(tables) if tables else None
    out: dict[str, Any] = {}
    for key in wanted:
        if key == "latents":
            shape = manifest.latent_shape(res)
            out[key] = _tensor(table, latent_col, shape)
        elif key == "text_emb":
            out[key] = _tensor(table, TEXT_EMB, manifest.text_shape)
        elif key == "text_len":
            out[key] = _numbers(table, TEXT_LEN, np.int16)
        elif key == "text_mask":
            lengths = _numbers(table, TEXT_LEN, np.int16)
            out[key] = np.arange(manifest.max_length)[None, :] < lengths[:, None]  # (N, L)
        elif key in _STRING_KEYS:
            out[key] = table.column(_STRING_KEYS[key]).to_pylist() if table is not None else []
        else:
            out[key] = _numbers(table, {"width": WIDTH, "height": HEIGHT}[key], np.int32)
    return out


def _first_rows(directory: str, shards: list[dict[str, Any]], columns: list[str], max_rows: int) -> list[pa.Table]:
    """Row groups from the first shards until ``max_rows`` rows (the last one sliced)."""
    tables, rows = [], 0
    for shard in shards:
        if rows >= max_rows:
            break
        with storage.open_input_file(storage.join(directory, shard["file"])) as f:
            parquet = pq.ParquetFile(f)
            for group in range(parquet.num_row_groups):
                if rows >= max_rows:
                    break
                table = parquet.read_row_group(group, columns=columns)
                tables.append(table.slice(0, max_rows - rows))
                rows += tables[-1].num_rows
    return tables


def _tensor(table: pa.Table | None, column: str, shape: tuple[int, ...]) -> np.ndarray:
    if table is None:
        return np.zeros((0, *shape), dtype=np.float16)
    return tensor_from_arrow(table.column(column), tuple(shape), "float16").copy()  # own the memory


def _numbers(table: pa.Table | None, column: str, dtype: type) -> np.ndarray:
    if table is None:
        return np.zeros((0,), dtype=dtype)
    return table.column(column).to_numpy().astype(dtype)
