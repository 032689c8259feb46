"""Shard format and pure planning functions: bytes in = tensors out, no Ray needed."""

from __future__ import annotations

import json
import os
from fractions import Fraction

import numpy as np
import pyarrow.parquet as pq
import pytest

from microdit import storage
from microdit.data.manifest import DATA_ROOT_ENV, Manifest, data_root, resolve_set_path, save_manifest
from microdit.data.plan import plan_pass, synthetic_rows, window_permutation
from microdit.data.reader import read_set
from microdit.data.schema import (
    TEXT_EMB,
    build_table,
    latent_column,
    shard_metadata,
    shard_name,
    tensor_from_arrow,
    tensor_specs,
    write_shard,
)
from microdit.errors import ConfigError


def _rows(n: int, seed: int = 0, L: int = 5, Dy: int = 6):
    rng = np.random.default_rng(seed)
    return {
        "id": [f"t/{seed}-{i}" for i in range(n)],
        "caption": [f"caption {i}" for i in range(n)],
        "source": ["real"] * n,
        "dataset": ["t"] * n,
        "width": list(range(10, 10 + n)),
        "height": [20] * n,
        latent_column(8): rng.standard_normal((n, 3, 8, 8)).astype(np.float16),
        TEXT_EMB: rng.standard_normal((n, L, Dy)).astype(np.float16),
        "text_len": rng.integers(1, L + 1, n).astype(np.int16),
    }


SPECS = tensor_specs([8], {8: (3, 8, 8)}, (5, 6))


def test_tensor_round_trip_is_bit_exact_and_zero_copy(tmp_path):
    rows = _rows(7)
    write_shard(build_table(rows, SPECS, {"skipped": {"too_small": 2}}), tmp_path / shard_name(0))
    table = pq.read_table(tmp_path / shard_name(0))
    latents = tensor_from_arrow(table.column(latent_column(8)), (3, 8, 8), "float16")
    assert latents.shape == (7, 3, 8, 8) and latents.dtype == np.float16
    assert np.array_equal(latents.view(np.uint16), rows[latent_column(8)].view(np.uint16))  # bit-exact
    assert not latents.flags.owndata  # a view over the Arrow buffer
    sliced = tensor_from_arrow(table.column(TEXT_EMB).slice(3, 2), (5, 6), "float16")
    assert np.array_equal(sliced, rows[TEXT_EMB][3:5])  # slices honour the array offset
    meta = shard_metadata(tmp_path / shard_name(0))
    assert meta["rows"] == 7 and meta["skipped"] == {"too_small": 2} and meta["schema_version"] == 1
    assert meta["tensors"][latent_column(8)] == {"shape": [3, 8, 8], "dtype": "float16"}


def test_tensor_columns_are_plain_uncompressed_without_statistics(tmp_path):
    write_shard(build_table(_rows(16), SPECS), tmp_path / "s.parquet")
    group = pq.ParquetFile(tmp_path / "s.parquet").metadata.row_group(0)
    columns = {group.column(i).path_in_schema: group.column(i) for i in range(group.num_columns)}
    for name in (latent_column(8), TEXT_EMB):
        col = columns[name]
        assert not any("DICTIONARY" in e for e in col.encodings), col.encodings
        assert col.compression == "UNCOMPRESSED" and not col.is_stats_set
    assert columns["caption"].compression == "ZSTD"
    assert not list(tmp_path.glob(".*.tmp"))  # the temp file was renamed away


def test_read_set_concatenates_shards_and_builds_the_mask(tmp_path):
    tables = [build_table(_rows(n, seed=s), SPECS) for s, n in enumerate((4, 0, 3))]
    shards = []
    for i, table in enumerate(tables):
        write_shard(table, tmp_path / shard_name(i))
        shards.append({"file": shard_name(i), "rows": table.num_rows})
    save_manifest(
        tmp_path,
        Manifest(
            name="t",
            dataset="t",
            source="real",
            vae={"name": "pixels"},
            text_encoder={"max_length": 5, "dim": 6},
            resolutions=[8],
            tensors=SPECS,
            prepare={},
            shards=shards,
            rows={"real": 7},
            complete=True,
        ),
    )
    data = read_set(tmp_path)
    assert data["latents"].shape == (7, 3, 8, 8) and data["text_emb"].shape == (7, 5, 6)
    assert data["id"] == [f"t/0-{i}" for i in range(4)] + [f"t/2-{i}" for i in range(3)]
    assert np.array_equal(data["text_mask"].sum(1), data["text_len"])
    assert read_set(tmp_path, columns=["caption"]).keys() == {"caption"}
    with pytest.raises(ConfigError, match="no latents at 16 px"):
        read_set(tmp_path, resolution=16)


def test_resolve_set_path_uses_the_data_root(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path / "..")
    cwd = os.getcwd()
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path))
    assert resolve_set_path("demo_real") == str(tmp_path / "demo_real")
    assert resolve_set_path(tmp_path / "p") == str(tmp_path / "p")  # os.PathLike is accepted
    # relative paths resolve against the working directory (to absolute paths), never the data root
    assert resolve_set_path("./x/y") == os.path.join(cwd, "x/y") != str(tmp_path / "x/y")
    assert resolve_set_path("x/y") == os.path.join(cwd, "x/y")
    assert resolve_set_path("../s") == os.path.join(os.path.dirname(cwd), "s")
    assert resolve_set_path("~/s") == os.path.join(os.path.expanduser("~"), "s")
    assert resolve_set_path("/abs/set") == "/abs/set"
    assert resolve_set_path("s3://b/sets/x") == "s3://b/sets/x"  # URIs are left untouched
    monkeypatch.setenv(DATA_ROOT_ENV, "s3://b/d")
    assert data_root() == "s3://b/d" and resolve_set_path("demo_real") == "s3://b/d/demo_real"
    monkeypatch.delenv(DATA_ROOT_ENV)
    monkeypatch.setenv(storage.ROOT_ENV, str(tmp_path / "root"))
    assert data_root() == str(tmp_path / "root" / "data")
    assert resolve_set_path("demo_real") == str(tmp_path / "root" / "data" / "demo_real")
    with pytest.raises(ConfigError, match="empty data set reference"):
        resolve_set_path("")


@pytest.mark.parametrize("f", [Fraction(0), Fraction(3, 10), Fraction(1), Fraction(1, 3)])
def test_bresenham_counts_are_exact_over_any_run_of_batches(f):
    batch, rows, syn, counts = 7, 0, 0, []
    for _ in range(200):
        k = synthetic_rows(rows, syn, batch, f)
        counts.append(k)
        rows, syn = rows + batch, syn + k
        assert syn == (rows * f.numerator) // f.denominator  # floor(n f) after every batch
    cum = np.concatenate([[0], np.cumsum(counts)])
    for length in (1, 3, 50):
        window = cum[length:] - cum[:-length]
        assert np.all(np.abs(window - float(f) * batch * length) <= 1)


def test_pass_plan_partitions_shards_over_ranks_and_changes_per_pass():
    shards = [(f"s{i}", 10 + i % 3) for i in range(11)]
    for p in (0, 1):
        plans = [
            plan_pass(shards, "real", p, seed=5, rank=r, world_size=3, shuffle_buffer=25) for r in range(3)
        ]
        files = [f for plan in plans for w in plan.windows for f in w.files]
        assert sorted(files) == sorted(s for s, _ in shards)  # every shard exactly once per pass
        for plan in plans:
            assert all(w.rows >= 25 for w in plan.windows[:-1])
            assert [w.start for w in plan.windows] == list(
                np.cumsum([0] + [w.rows for w in plan.windows])[:-1]
            )
    first = [w.files for w in plan_pass(shards, "real", 0, 5, 0, 3, 25).windows]
    second = [w.files for w in plan_pass(shards, "real", 1, 5, 0, 3, 25).windows]
    assert first != second
    assert np.array_equal(
        window_permutation(5, "real", 0, 0, 1, 30), window_permutation(5, "real", 0, 0, 1, 30)
    )
    json.dumps([w.files for w in plan_pass(shards, "synthetic", 0, 5, 0, 3, 25).windows])
