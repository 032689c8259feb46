"""The latent shard format (schema version 1): one Parquet file = one shard, written atomically.

Columns (one row per image):

| column        | Arrow type                 | meaning                                               |
|---------------|----------------------------|-------------------------------------------------------|
| id            | string                     | stable unique id, ``<dataset>/<key in the source>``   |
| caption       | string                     | the caption that was encoded                          |
| source        | string                     | ``real`` or ``synthetic``                             |
| dataset       | string                     | dataset name (e.g. ``demo_real``, ``cc12m``)          |
| width, height | int32                      | original image size in pixels                         |
| latent_<R>    | fixed_size_binary(C*h*w*2) | fp16 latent (C, h, w) of the image at R px, one per R |
| text_emb      | fixed_size_binary(L*Dy*2)  | fp16 per-token caption states (L, Dy), padding incl.  |
| text_len      | int16                      | real tokens; mask = arange(L) < text_len              |

Why fixed-size binary: a column of N tensors is then one contiguous buffer, so
``np.frombuffer`` turns it into an (N, *shape) array without per-row Python work (SPEC §8:
~4x faster than Ray's tensor extension type or nested lists). Shapes and dtypes live in the
Parquet schema metadata under ``b"microdit"`` (JSON: ``schema_version``, ``tensors``, the
shard's ``skipped`` counts by reason, its ``unit`` index and the ``vae`` / ``text_encoder`` that
encoded it, so a manifest can always be rebuilt from the shards alone). Tensor columns are written without dictionary encoding,
statistics or compression: fp16 noise-like data does not compress, and a dictionary-coded fp16
column reads ~8x slower (SPEC §8).

Writes are atomic: a shard is written to ``.<name>.tmp`` and renamed, so a file named
``shard-*.parquet`` is always complete. A shard may hold zero rows (every item skipped); it
still records that its unit of work is done.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA_VERSION = 1
METADATA_KEY = b"microdit"
ID, CAPTION, SOURCE, DATASET, WIDTH, HEIGHT = "id", "caption", "source", "dataset", "width", "height"
TEXT_EMB, TEXT_LEN = "text_emb", "text_len"
SHARD_GLOB = "shard-*.parquet"


def latent_column(resolution: int) -> str:
    """Name of the latent column for images encoded at ``resolution`` pixels."""
    return f"latent_{int(resolution)}"


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.parquet"


def tensor_to_arrow(array: np.ndarray) -> pa.FixedSizeBinaryArray:
    """(N, *shape) array -> N fixed-size binary values over one buffer (one copy at most)."""
    array = np.ascontiguousarray(array)
    width = int(array[0].nbytes) if len(array) else int(np.prod(array.shape[1:]) * array.itemsize)
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), len(array), [None, pa.py_buffer(array)])


def tensor_from_arrow(column: pa.Array | pa.ChunkedArray, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """Fixed-size binary column -> (N, *shape) numpy view of its data buffer.

    Zero-copy for a single chunk (the usual case for one block or a slice of it); several chunks
    are concatenated once. The result is read-only when it views Arrow memory.
    """
    if isinstance(column, pa.ChunkedArray):
        column = column.chunks[0] if column.num_chunks == 1 else column.combine_chunks()
    if column.null_count:
        raise ValueError("tensor column holds nulls; the shard is corrupt")
    width = column.type.byte_width
    expected = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if width != expected:
        raise ValueError(f"tensor column is {width} bytes per row but shape {shape} {dtype} needs {expected}")
    data = column.buffers()[1]
    flat = np.frombuffer(data, dtype=np.uint8, count=len(column) * width, offset=column.offset * width)
    return flat.view(dtype).reshape((len(column), *shape))


def tensor_specs(
    resolutions: list[int], latent_shape: dict[int, tuple[int, int, int]], text_shape: tuple[int, int]
) -> dict[str, dict[str, Any]]:
    """The ``tensors`` metadata: column -> {shape, dtype} for every tensor column of a set."""
    specs = {latent_column(r): {"shape": list(latent_shape[r]), "dtype": "float16"} for r in resolutions}
    specs[TEXT_EMB] = {"shape": list(text_shape), "dtype": "float16"}
    return specs


def arrow_schema(tensors: dict[str, dict[str, Any]], extra: dict[str, Any] | None = None) -> pa.Schema:
    """The Arrow schema of a shard, with shapes/dtypes and ``extra`` (skip counts, encoders) as metadata."""
    cols = [
        pa.field(ID, pa.string(), nullable=False),
        pa.field(CAPTION, pa.string()),
        pa.field(SOURCE, pa.string()),
        pa.field(DATASET, pa.string()),
        pa.field(WIDTH, pa.int32()),
        pa.field(HEIGHT, pa.int32()),
    ]
    for name, spec in tensors.items():
        width = int(np.prod(spec["shape"])) * np.dtype(spec["dtype"]).itemsize
        cols.append(pa.field(name, pa.binary(width), nullable=False))
    cols.append(pa.field(TEXT_LEN, pa.int16()))
    meta = {"skipped": {}, **(extra or {}), "schema_version": SCHEMA_VERSION, "tensors": tensors}
    return pa.schema(cols, metadata={METADATA_KEY: json.dumps(meta).encode()})


def build_table(
    rows: dict[str, Any], tensors: dict[str, dict[str, Any]], extra: dict[str, Any] | None = None
) -> pa.Table:
    """Columns as python lists / numpy arrays (tensors: (N, *shape) fp16) -> a shard table."""
    schema = arrow_schema(tensors, extra)
    arrays = []
    for f in schema:
        value = rows[f.name]
        if f.name in tensors:
            spec = tensors[f.name]
            value = np.asarray(value, dtype=spec["dtype"])
            if value.size == 0:
                value = value.reshape((0, *spec["shape"]))
            if value.shape[1:] != tuple(spec["shape"]):
                raise ValueError(f"column {f.name}: shape {value.shape[1:]} != schema {tuple(spec['shape'])}")
            arrays.append(tensor_to_arrow(value))
        else:
            arrays.append(pa.array(value, type=f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def write_shard(table: pa.Table, path: Path) -> None:
    """Write ``table`` to ``path`` atomically (temp file in the same directory, then rename)."""
    meta = json.loads(table.schema.metadata[METADATA_KEY])
    tensor_cols = set(meta["tensors"])
    plain = [c for c in table.column_names if c not in tensor_cols]
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(
        table,
        tmp,
        row_group_size=max(1, table.num_rows),  # one row group: a shard is read whole
        use_dictionary=plain,  # never dictionary-code fp16 tensor columns (SPEC §8)
        write_statistics=plain,
        compression={c: ("none" if c in tensor_cols else "zstd") for c in table.column_names},
    )
    os.replace(tmp, path)


def shard_metadata(path: Path) -> dict[str, Any]:
    """A shard's ``microdit`` metadata plus ``rows``, read from the Parquet footer only."""
    footer = pq.read_metadata(path)
    raw = footer.metadata.get(METADATA_KEY) if footer.metadata else None
    if raw is None:
        raise ValueError(f"{path}: no microdit metadata; not a shard written by `microdit prepare`")
    meta = json.loads(raw)
    meta["rows"] = footer.num_rows
    return meta
