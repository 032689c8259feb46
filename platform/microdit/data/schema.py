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

Shards live wherever ``microdit.storage`` reaches (a local or shared disk, or an object store
such as ``s3://``); every function here takes a location string (an absolute path or a URI).
Writes are atomic: on a disk a shard is written to a temporary ``.<name>.*.tmp`` in the same
directory and renamed; on an object store it is written locally and uploaded in one piece. So a
file named ``shard-*.parquet`` is always complete. A shard may hold zero rows (every item
skipped); it still records that its unit of work is done.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from microdit import storage

SCHEMA_VERSION = 1
METADATA_KEY = b"microdit"
ID, CAPTION, SOURCE, DATASET, WIDTH, HEIGHT = "id", "caption", "source", "dataset", "width", "height"
TEXT_EMB, TEXT_LEN = "text_emb", "text_len"
SHARD_GLOB = "shard-*.parquet"
_SHARD_NAME = re.compile(r"^shard-(\d+)\.parquet$")


def latent_column(resolution: int) -> str:
    """Name of the latent column for images encoded at ``resolution`` pixels."""
    return f"latent_{int(resolution)}"


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.parquet"


def shard_index(name: str) -> int | None:
    """The unit index of a shard file name (``shard-000012.parquet`` -> 12); None for other names."""
    match = _SHARD_NAME.match(name)
    return int(match.group(1)) if match else None


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


def write_shard(table: pa.Table, location: str | os.PathLike) -> None:
    """Write ``table`` to ``location`` atomically (module docstring: temp + rename on a disk, one
    upload to an object store)."""
    meta = json.loads(table.schema.metadata[METADATA_KEY])
    tensor_cols = set(meta["tensors"])
    plain = [c for c in table.column_names if c not in tensor_cols]
    with storage.atomic_local_output(os.fspath(location)) as tmp:
        pq.write_table(
            table,
            tmp,
            row_group_size=max(1, table.num_rows),  # one row group: a shard is read whole
            use_dictionary=plain,  # never dictionary-code fp16 tensor columns (SPEC §8)
            write_statistics=plain,
            compression={c: ("none" if c in tensor_cols else "zstd") for c in table.column_names},
        )


def table_metadata(table: pa.Table) -> dict[str, Any]:
    """What ``shard_metadata`` returns for the shard ``table`` becomes, without reading it back."""
    meta = json.loads(table.schema.metadata[METADATA_KEY])
    meta["rows"] = table.num_rows
    return meta


def shard_metadata(location: str | os.PathLike) -> dict[str, Any]:
    """A shard's ``microdit`` metadata plus ``rows``, read from the Parquet footer only."""
    location = os.fspath(location)
    with storage.open_input_file(location) as f:
        footer = pq.read_metadata(f)
    raw = footer.metadata.get(METADATA_KEY) if footer.metadata else None
    if raw is None:
        raise ValueError(f"{location}: no microdit metadata; not a shard written by `microdit prepare`")
    meta = json.loads(raw)
    meta["rows"] = footer.num_rows
    return meta


def shard_footers(directory: str, indices: list[int], threads: int = 16) -> dict[int, dict[str, Any]]:
    """``shard_metadata`` of ``directory/shard_name(i)`` for each ``i``, read concurrently (on an
    object store each footer is a round trip)."""
    from concurrent.futures import ThreadPoolExecutor

    if not indices:
        return {}
    locations = [storage.join(directory, shard_name(i)) for i in indices]
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(locations)))) as pool:
        return dict(zip(indices, pool.map(shard_metadata, locations)))


def read_shard(location: str | os.PathLike, columns: list[str] | None = None) -> pa.Table:
    """A shard's rows (``columns`` only), read with pyarrow through ``microdit.storage``."""
    fs, path = storage.filesystem(os.fspath(location))
    return pq.read_table(path, columns=columns, filesystem=fs)
