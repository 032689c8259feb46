"""Prepared sets on an object store: ``prepare``, ``read_set`` and ``MixedStream`` against a real
local S3 server (moto, ``s3_bucket``) give exactly what they give on a local disk."""

from __future__ import annotations

import io
import os
from itertools import islice

import numpy as np
import pytest
from PIL import Image

from microdit import storage
from microdit.config.data import DataMixConfig, PrepareConfig, SourceConfig, TextEncoderConfig
from microdit.data.demo import demo_configs
from microdit.data.manifest import MANIFEST, load_manifest, set_exists
from microdit.data.prepare import prepare
from microdit.data.reader import read_set
from microdit.data.stream import MixedStream
from microdit.errors import ConfigError

KEPT = 7  # captioned images; one more has no caption: 8 items, 3 per unit -> 3 shards (3, 3, 1 rows)


@pytest.fixture()
def folder(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    for i in range(KEPT + 1):
        rng = np.random.default_rng(i)
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (24, 20, 3), dtype=np.uint8)).save(buf, "PNG")
        (root / f"img{i}.png").write_bytes(buf.getvalue())
        if i < KEPT:
            (root / f"img{i}.txt").write_text(f"noise picture {i}")
    return root


def _config(folder, out: str) -> PrepareConfig:
    return PrepareConfig(
        source=SourceConfig(kind="folder", path=str(folder), dataset="noise"),
        out=out,
        resolutions=(16,),
        text_encoder=TextEncoderConfig(max_length=8),
        rows_per_shard=3,
    )


def _shard_names(location: str) -> list[str]:
    return [n for n in storage.list_names(location) if n.startswith("shard-")]


def test_prepare_into_s3_matches_local_and_resume_rewrites_only_the_lost_shard(
    ray_local, s3_bucket, folder, tmp_path
):
    out = storage.join(s3_bucket, "sets/x")
    local = str(tmp_path / "local-x")
    summary = prepare(_config(folder, out), progress=False)
    assert summary.out == out and (summary.shards_written, summary.rows_written) == (3, KEPT)
    prepare(_config(folder, local), progress=False)

    # (a) the manifest read back from the bucket lists exactly the shard objects in the bucket
    manifest = load_manifest(out)
    assert manifest.complete and manifest.name == "x" and set_exists(out)
    assert storage.list_names(out) == sorted([MANIFEST, *_shard_names(out)])  # no temp objects
    assert [s["file"] for s in manifest.shards] == _shard_names(out) == [
        f"shard-{i:06d}.parquet" for i in range(3)
    ]
    assert [s["rows"] for s in manifest.shards] == [3, 3, 1] and manifest.rows == {"real": KEPT}
    assert manifest.skipped == {"no_caption": 1} and manifest.tensors == load_manifest(local).tensors
    remote, disk = read_set(out), read_set(local)
    assert remote["id"] == disk["id"] and len(remote["id"]) == KEPT
    assert np.array_equal(remote["latents"], disk["latents"])
    assert np.array_equal(remote["text_emb"], disk["text_emb"])
    assert read_set(out, ["caption"], max_rows=4)["caption"] == disk["caption"][:4]

    # (b) an interrupted run: one shard object lost, manifest not complete -> only that shard is rewritten
    kept = storage.file_stamp(storage.join(out, "shard-000000.parquet"))
    storage.delete(storage.join(out, "shard-000001.parquet"))
    data = storage.read_json(storage.join(out, MANIFEST))
    storage.write_json(storage.join(out, MANIFEST), {**data, "complete": False})
    assert not load_manifest(out).complete
    resumed = prepare(_config(folder, out), progress=False)
    assert (resumed.shards_written, resumed.rows_written, resumed.skipped) == (1, 3, {})
    assert (resumed.shards_total, resumed.rows_total) == (3, KEPT)
    assert storage.file_stamp(storage.join(out, "shard-000000.parquet")) == kept
    again = load_manifest(out)
    assert again.complete and again.shards == manifest.shards and again.skipped == {"no_caption": 1}
    assert np.array_equal(read_set(out)["latents"], disk["latents"])
    assert prepare(_config(folder, out), progress=False).already_complete


def _upload_set(local: str, location: str) -> None:
    for name in os.listdir(local):
        if not name.startswith("."):
            storage.upload_file(os.path.join(local, name), storage.join(location, name))


@pytest.mark.parametrize("limit", [None, 0], ids=["in_memory", "ray_data"])
def test_mixed_stream_over_s3_sets_equals_the_local_sets(tiny_demo, s3_bucket, limit, monkeypatch):
    import ray

    strategies = []  # the read tasks' scheduling strategy: soft affinity to this (the consumer's) node
    map_batches = ray.data.Dataset.map_batches

    def recording(self, fn, *args, **kwargs):
        strategies.append(kwargs.get("scheduling_strategy"))
        return map_batches(self, fn, *args, **kwargs)

    monkeypatch.setattr(ray.data.Dataset, "map_batches", recording)
    remote = {name: storage.join(s3_bucket, "data", name) for name in ("demo_real", "demo_synthetic")}
    for name, location in remote.items():
        _upload_set(tiny_demo[name], location)

    def batches(sets: dict[str, str]):
        config = DataMixConfig(
            real=sets["demo_real"], synthetic=sets["demo_synthetic"], synthetic_fraction=0.4, shuffle_buffer=16, seed=5
        )
        with MixedStream(config, 32, 8, with_ids=True, in_memory_max_bytes=limit) as stream:
            assert all(s.in_memory == (limit is None) for s in stream.sources.values())
            shards = [f for s in stream.sources.values() for f, _ in s.shards]
            return list(islice(stream, 8)), shards, stream.state_dict()

    s3_batches, s3_shards, s3_state = batches(remote)
    disk_batches, disk_shards, disk_state = batches(tiny_demo)
    assert all(f.startswith(s3_bucket + "/data/") for f in s3_shards)
    assert not any(f.startswith("s3://") for f in disk_shards)
    assert len(s3_batches) == 8 and s3_state == disk_state
    for a, b in zip(s3_batches, disk_batches):
        assert a["id"] == b["id"] and len(a["id"]) == 8
        assert a["latent"].numpy().tobytes() == b["latent"].numpy().tobytes()
        assert a["text_emb"].numpy().tobytes() == b["text_emb"].numpy().tobytes()
        assert a["is_synthetic"].tolist() == b["is_synthetic"].tolist()
    assert sum(int(b["is_synthetic"].sum()) for b in s3_batches) == int(8 * 8 * 0.4)
    node = ray.get_runtime_context().get_node_id()
    assert len(strategies) == (0 if limit is None else 4)  # one Ray Data segment per source and stream
    assert all(s.node_id == node and s.soft for s in strategies)


def test_a_missing_s3_set_is_a_config_error_naming_the_location(s3_bucket):
    missing = storage.join(s3_bucket, "sets/nothing")
    assert not set_exists(missing)
    for call in (lambda: load_manifest(missing), lambda: read_set(missing)):
        with pytest.raises(ConfigError, match=f"no prepared set at {missing}: manifest.json is missing"):
            call()
    config = DataMixConfig(real=missing, synthetic=None, synthetic_fraction=0.0)
    with pytest.raises(ConfigError, match=missing):
        MixedStream(config, 32, 4)
    outs = {name: c.out for name, c in demo_configs(storage.join(s3_bucket, "data"), [32], "tiny").items()}
    assert outs == {name: f"{s3_bucket}/data/{name}" for name in ("demo_real", "demo_real_heldout", "demo_synthetic")}
