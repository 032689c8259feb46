"""``prepare`` on a real local Ray cluster: sources, skip reasons, atomic resume, no-op re-runs."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from microdit.cli.main import main
from microdit.config.data import PrepareConfig, SourceConfig, TextEncoderConfig
from microdit.data.images import resize_center_crop
from microdit.data.manifest import MANIFEST, load_manifest
from microdit.data.prepare import content_fingerprint, prepare, recorded_fingerprint
from microdit.data.reader import read_set
from microdit.errors import ConfigError

GOOD = 10


def _png(seed: int, size: tuple[int, int] = (40, 30)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
        buf, "JPEG"
    )
    return buf.getvalue()


@pytest.fixture()
def image_folder(tmp_path):
    """10 good captioned images + 1 corrupt, 1 truncated, 1 too small, 1 without and 1 with a blank caption."""
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    for i in range(GOOD):
        (root / "sub" / f"good{i:02d}.png").write_bytes(_png(i))
        (root / "sub" / f"good{i:02d}.txt").write_text(f"random noise number {i}\n")
    (root / "corrupt.png").write_bytes(b"\x89PNG not really an image")
    (root / "corrupt.txt").write_text("corrupt")
    (root / "truncated.jpg").write_bytes(_jpeg(99)[:700])
    (root / "truncated.txt").write_text("truncated")
    (root / "small.png").write_bytes(_png(7, (10, 40)))
    (root / "small.txt").write_text("small")
    (root / "nocaption.png").write_bytes(_png(8))
    (root / "blank.png").write_bytes(_png(9))
    (root / "blank.txt").write_text("   \n")
    return root


def _config(source: SourceConfig, out, **kw) -> PrepareConfig:
    return PrepareConfig(
        source=source,
        out=str(out),
        resolutions=(16,),
        text_encoder=TextEncoderConfig(max_length=8),
        rows_per_shard=3,
        min_side=16,
        **kw,
    )


def test_cli_folder_prepare_counts_skips_by_reason(ray_local, image_folder, tmp_path, capsys):
    argv = [
        "prepare",
        str(image_folder),
        "--out",
        str(tmp_path / "set"),
        "--dataset",
        "noise",
        "--resolution",
        "16",
        "--max-length",
        "8",
        "--rows-per-shard",
        "3",
        "--min-side",
        "16",
        "--no-progress",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "wrote 10 rows in 5 shards" in printed
    assert "no_caption=2, too_small=1, truncated=1, undecodable=1" in printed
    manifest = load_manifest(tmp_path / "set")
    assert manifest.complete and manifest.rows == {"real": GOOD}
    assert manifest.skipped == {"undecodable": 1, "truncated": 1, "too_small": 1, "no_caption": 2}
    assert manifest.units == 5 and len(manifest.shards) == 5  # 15 items, 3 per unit
    assert manifest.text_encoder["dim"] == 384 and manifest.vae["name"] == "pixels"
    data = read_set(tmp_path / "set")
    assert sorted(data["id"]) == [f"noise/sub/good{i:02d}.png" for i in range(GOOD)]
    assert data["latents"].shape == (GOOD, 3, 16, 16)
    i = data["id"].index("noise/sub/good03.png")
    assert data["caption"][i] == "random noise number 3" and (data["width"][i], data["height"][i]) == (40, 30)
    # the latent is the resized, center-cropped image in [-1, 1]
    expected = np.asarray(
        Image.open(image_folder / "sub/good03.png").resize((21, 16), Image.Resampling.BICUBIC)
    )
    expected = expected[:, 2:18].transpose(2, 0, 1) / 127.5 - 1
    assert np.abs(data["latents"][i].astype(np.float32) - expected).max() < 2e-3


def test_interrupted_prepare_resumes_without_duplicates_and_rerun_is_noop(ray_local, image_folder, tmp_path):
    config = _config(SourceConfig(kind="folder", path=str(image_folder), dataset="noise"), tmp_path / "set")
    prepare(config, progress=False)
    out = tmp_path / "set"
    first = read_set(out, columns=["id", "latents"])
    # simulate a run that died: two shards never renamed into place, a half-written temp file left behind
    lost = sum(pq.read_metadata(out / f).num_rows for f in ("shard-000001.parquet", "shard-000003.parquet"))
    (out / "shard-000001.parquet").unlink()
    (out / "shard-000003.parquet").unlink()
    (out / ".shard-000003.parquet.tmp").write_bytes(b"half a shard")
    manifest = json.loads((out / MANIFEST).read_text())
    manifest["complete"] = False
    (out / MANIFEST).write_text(json.dumps(manifest))
    kept_mtime = (out / "shard-000000.parquet").stat().st_mtime_ns

    summary = prepare(config, progress=False)
    assert summary.shards_written == 2 and summary.rows_written == lost
    assert (out / "shard-000000.parquet").stat().st_mtime_ns == kept_mtime  # finished shards untouched
    assert not list(out.glob(".*.tmp"))
    again = read_set(out, columns=["id", "latents"])
    assert len(again["id"]) == len(set(again["id"])) == GOOD
    order = np.argsort(again["id"])
    assert np.array_equal(again["latents"][order], first["latents"][np.argsort(first["id"])])

    noop = prepare(config, progress=False)
    assert noop.already_complete and noop.rows_written == 0 and noop.rows_total == GOOD
    assert main(["prepare", str(image_folder), "--out", str(out), "--resolution", "8"]) == 2  # one-line error
    with pytest.raises(ConfigError, match="other settings"):
        prepare(
            _config(SourceConfig(kind="folder", path=str(image_folder), dataset="noise"), out, seed=1),
            progress=False,
        )


def test_webdataset_parquet_and_index_sources_agree(ray_local, tmp_path):
    """The same 6 captioned images (one caption-less) through three layouts give the same rows."""
    images = {f"k{i}": _png(i) for i in range(6)}
    captions = {f"k{i}": f"caption {i}" for i in range(5)}  # k5 has none
    tar_path = tmp_path / "part-0.tar"
    with tarfile.open(tar_path, "w") as tar:
        for key, data in images.items():
            members = [(f"{key}.png", data)]
            if key in captions:
                payload = (
                    json.dumps({"caption": captions[key]}).encode() if key == "k1" else captions[key].encode()
                )
                members.append((f"{key}.json" if key == "k1" else f"{key}.txt", payload))
            for name, payload in members:
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    image_struct = [{"bytes": images[k], "path": f"{k}.png"} for k in images]
    pq.write_table(
        pa.table({"key": list(images), "image": image_struct, "caption": [captions.get(k) for k in images]}),
        tmp_path / "hf.parquet",
    )
    (tmp_path / "files").mkdir()
    for key, data in images.items():
        (tmp_path / "files" / f"{key}.png").write_bytes(data)
    (tmp_path / "files" / "index.jsonl").write_text(
        "\n".join(json.dumps({"file": f"{k}.png", "caption": captions.get(k), "key": k}) for k in images)
    )

    sources = {
        "wds": SourceConfig(kind="webdataset", path=str(tar_path), dataset="d"),
        "hf": SourceConfig(kind="parquet", path=str(tmp_path / "hf.parquet"), id_column="key", dataset="d"),
        "index": SourceConfig(
            kind="folder",
            path=str(tmp_path / "files" / "index.jsonl"),
            id_column="key",
            dataset="d",
            tag="synthetic",
        ),
    }
    results = {}
    for name, source in sources.items():
        summary = prepare(_config(source, tmp_path / f"out-{name}"), progress=False)
        assert summary.skipped == {"no_caption": 1}, name
        results[name] = read_set(tmp_path / f"out-{name}", columns=["id", "caption", "latents", "source"])
    assert results["wds"]["id"] == [f"d/part-0/k{i}" for i in range(5)]
    assert results["hf"]["id"] == results["index"]["id"] == [f"d/k{i}" for i in range(5)]
    assert results["wds"]["caption"] == results["hf"]["caption"] == [f"caption {i}" for i in range(5)]
    assert np.array_equal(results["wds"]["latents"], results["hf"]["latents"])
    assert np.array_equal(results["hf"]["latents"], results["index"]["latents"])
    assert set(results["index"]["source"]) == {"synthetic"}


@pytest.fixture()
def sized_folder(tmp_path):
    """Captioned images with shorter sides 20 (mid), 40 (big) and 10 (tiny) px."""
    root = tmp_path / "sized"
    root.mkdir()
    for seed, (name, size) in enumerate({"mid": (30, 20), "big": (40, 56), "tiny": (24, 10)}.items()):
        (root / f"{name}.png").write_bytes(_png(seed, size))
        (root / f"{name}.txt").write_text(f"a {name} image")
    return root


def _sized_config(folder, out, **kw) -> PrepareConfig:
    return PrepareConfig(
        source=SourceConfig(kind="folder", path=str(folder), dataset="s"),
        out=str(out),
        resolutions=(16, 32),
        text_encoder=TextEncoderConfig(max_length=8),
        rows_per_shard=3,
        **kw,
    )


def test_min_side_defaults_to_the_smallest_resolution_and_upsamples(ray_local, sized_folder, tmp_path):
    """A 16+32 px set keeps images >= 16 px at both sizes (the 20-px one upsampled for 32 px)."""
    config = _sized_config(sized_folder, tmp_path / "set")
    assert config.min_side is None and config.effective_min_side == 16
    summary = prepare(config, progress=False)
    assert summary.rows_written == 2 and summary.skipped == {"too_small": 1}
    manifest = load_manifest(tmp_path / "set")
    assert manifest.resolutions == [16, 32] and manifest.skipped == {"too_small": 1}
    assert manifest.prepare["min_side"] == 16  # recorded resolved
    for r in (16, 32):
        data = read_set(tmp_path / "set", columns=["id", "latents", "width", "height"], resolution=r)
        assert sorted(data["id"]) == ["s/big.png", "s/mid.png"]
        assert data["latents"].shape == (2, 3, r, r)
    data = read_set(tmp_path / "set", columns=["id", "latents"], resolution=32)
    mid = data["id"].index("s/mid.png")
    expected = resize_center_crop(Image.open(sized_folder / "mid.png").convert("RGB"), 32)  # 30x20 -> 48x32
    expected = expected.transpose(2, 0, 1) / 127.5 - 1
    assert np.abs(data["latents"][mid].astype(np.float32) - expected).max() < 2e-3


def test_explicit_min_side_still_filters(ray_local, sized_folder, tmp_path, capsys):
    config = _sized_config(sized_folder, tmp_path / "set", min_side=32)
    assert config.effective_min_side == 32
    summary = prepare(config, progress=True)
    assert summary.rows_written == 1 and summary.skipped == {"too_small": 2}
    # off a terminal the progress view is one summary line (a bar would redraw per shard)
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith("prepare set: 3/3 img (100%) · shards 1/1 · skipped 2 · ") and "img/s" in line, line
    for r in (16, 32):
        data = read_set(tmp_path / "set", columns=["id", "latents"], resolution=r)
        assert data["id"] == ["s/big.png"] and data["latents"].shape == (1, 3, r, r)


def test_old_manifests_read_min_side_null_as_the_largest_resolution(tmp_path):
    """Sets made when ``min_side: null`` meant max(resolutions): same for one size, different for two."""
    source = SourceConfig(kind="folder", path=str(tmp_path), dataset="s")
    one = PrepareConfig(source=source, out="x", resolutions=(16,))
    two = PrepareConfig(source=source, out="x", resolutions=(16, 32))
    assert recorded_fingerprint({**content_fingerprint(one), "min_side": None}) == content_fingerprint(one)
    old_two = recorded_fingerprint({**content_fingerprint(two), "min_side": None})
    assert old_two["min_side"] == 32 and content_fingerprint(two)["min_side"] == 16


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"rows_per_shard": 0}, r"^prepare\.rows_per_shard=0: Input should be greater than 0$"),
        ({"min_side": 0}, r"^prepare\.min_side=0: Input should be greater than 0$"),
        ({"resolutions": [16, 16]}, r"^prepare\.resolutions=\[16, 16\]: must not repeat a size$"),
        ({"resolutions": [4]}, r"^prepare\.resolutions\[0\]=4: Input should be greater than or equal to 8$"),
        ({"resolutions": []}, r"^prepare\.resolutions=\[\]: must list at least one pixel size$"),
        ({"source": {"kind": "ftp", "path": "p"}}, r"^prepare\.source\.kind='ftp': Input should be 'folder', "),
        ({"source": {"kind": "folder"}}, r"^prepare\.source\.path='': is required for folder"),
        ({"text_encoder": {"kind": "bert"}}, r"^prepare\.text_encoder\.kind='bert': Input should be 'auto', "),
        ({"vae": {"scale": 1}}, r"^prepare\.vae\.scale: unknown key; allowed: name, scaling_factor, "),
    ],
)
def test_prepare_config_errors_name_the_dotted_path(changes, message):
    data = {"source": {"kind": "folder", "path": "p"}, "out": "x", **changes}
    with pytest.raises(ConfigError, match=message):
        PrepareConfig.from_dict(data)
