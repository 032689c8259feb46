"""Reference statistics from a folder, a captions index and an array; cached by content.

Cache hits are proven by the extractor's image counter, not by wall time. 32 Inception images.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from microdit.errors import ConfigError
from microdit.evaluate.reference import decoded_reference_stats, reference_stats


def write_pngs(images: np.ndarray, folder) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i, im in enumerate(images):
        name = f"{i:03d}.png"
        Image.fromarray(im).save(folder / name)
        names.append(name)
    return names


def test_folder_reference_is_cached_by_content(tmp_path, emoji_set, inception_extractor):
    images = emoji_set[0][:8]
    write_pngs(images, tmp_path / "set")
    cache = tmp_path / "cache"

    before = inception_extractor.num_images
    first = reference_stats(tmp_path / "set", cache, extractor=inception_extractor)
    assert not first.from_cache and first.stats.count == 8 and first.captions is None
    assert inception_extractor.num_images == before + 8
    assert sorted(os.listdir(cache)) == sorted([Path(first.cache_path).name, Path(first.cache_path).with_suffix(".json").name])

    shutil.move(tmp_path / "set", tmp_path / "moved")  # same content elsewhere: still a hit
    second = reference_stats(tmp_path / "moved", cache, extractor=inception_extractor)
    assert second.from_cache and second.key == first.key and second.cache_path == first.cache_path
    assert inception_extractor.num_images == before + 8  # the network was not called again
    np.testing.assert_array_equal(second.stats.sum, first.stats.sum)
    np.testing.assert_array_equal(second.stats.outer_sum, first.stats.outer_sum)

    at_32 = reference_stats(tmp_path / "moved", cache, resolution=32, extractor=inception_extractor)
    assert not at_32.from_cache and at_32.key != first.key  # resolution is part of the key
    assert inception_extractor.num_images == before + 16

    # An in-memory array of the same images at the same resolution: same numbers, own cache entry.
    from_array = reference_stats(images, cache, resolution=32, extractor=inception_extractor)
    assert not from_array.from_cache and from_array.stats.count == 8
    np.testing.assert_allclose(from_array.stats.mean, at_32.stats.mean, rtol=1e-5, atol=1e-6)
    assert len(list(cache.glob("*.npz"))) == 3


def test_decoded_reference_streams_batches_and_decodes_nothing_on_a_hit(tmp_path, emoji_set, inception_extractor):
    """A prepared set's reference: decoded batch by batch (never more than batch_size images at
    once), the same statistics as the decoded array, and a cache hit calls neither decoder nor
    network. The key is the latents and the decoder: another VAE is another entry."""
    images = emoji_set[0][:10]  # (10, 64, 64, 3) uint8
    latents = images.transpose(0, 3, 1, 2).astype(np.float16)  # stand-in latents (N, C, h, w)
    calls: list[int] = []

    def decode(chunk: np.ndarray) -> np.ndarray:
        calls.append(len(chunk))
        return chunk.astype(np.uint8).transpose(0, 2, 3, 1)

    cache = tmp_path / "fid_cache"
    first = decoded_reference_stats(latents, decode, "vae-a", cache, batch_size=4, extractor=inception_extractor)
    assert calls == [4, 4, 2] and not first.from_cache and first.stats.count == 10
    whole = reference_stats(images, tmp_path / "other", extractor=inception_extractor)
    np.testing.assert_allclose(first.stats.sum, whole.stats.sum, rtol=1e-9)
    np.testing.assert_allclose(first.stats.outer_sum, whole.stats.outer_sum, rtol=1e-9)

    before = inception_extractor.num_images
    again = decoded_reference_stats(latents, decode, "vae-a", cache, batch_size=4, extractor=inception_extractor)
    assert again.from_cache and again.key == first.key and calls == [4, 4, 2]
    assert inception_extractor.num_images == before
    other_vae = decoded_reference_stats(latents, decode, "vae-b", cache, batch_size=8, extractor=inception_extractor)
    assert not other_vae.from_cache and other_vae.key != first.key and calls[3:] == [8, 2]
    assert sorted(p.suffix for p in cache.iterdir()) == [".json", ".json", ".npz", ".npz"]  # no temp files left


def test_caption_index_gives_first_caption_per_image(tmp_path, emoji_set, inception_extractor):
    images, captions = emoji_set[0][:8], emoji_set[1][:8]
    names = write_pngs(images, tmp_path / "coco" / "images")
    rows = []
    for name, caption in zip(names, captions):
        rows.append({"image": f"images/{name}", "caption": caption})
    rows.insert(3, {"image": f"images/{names[0]}", "caption": "a second caption of image 0"})
    rows.append({"image": f"images/{names[5]}", "caption": "another caption of image 5"})
    index = tmp_path / "coco" / "captions.jsonl"
    index.write_text("\n".join(json.dumps(r) for r in rows) + "\n")

    ref = reference_stats(index, tmp_path / "cache", extractor=inception_extractor, limit=6)
    assert ref.stats.count == 6
    assert ref.captions == captions[:6]  # one caption per image, the first, in index order
    cached = reference_stats(index, tmp_path / "cache", extractor=inception_extractor, limit=6)
    assert cached.from_cache and cached.captions == captions[:6]


def test_reference_errors_name_the_culprit(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no images"):
        reference_stats(tmp_path / "empty", tmp_path / "cache")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image": "a.png", "caption": "x"}\n{"caption": "no image"}\n')
    with pytest.raises(ConfigError, match="line 2"):
        reference_stats(bad, tmp_path / "cache")
    missing = tmp_path / "missing.jsonl"
    missing.write_text('{"image": "nope.png", "caption": "x"}\n{"image": "nope2.png", "caption": "y"}\n')
    with pytest.raises(ConfigError, match="missing"):
        reference_stats(missing, tmp_path / "cache")
    with pytest.raises(ConfigError, match="uint8"):
        reference_stats(np.zeros((4, 8, 8, 3), np.float32), tmp_path / "cache")


def test_reference_features_come_from_an_extractor_on_the_given_device(tmp_path, monkeypatch, emoji_set):
    """``torch.device("cpu", 0)`` computes on the CPU but is not the default ``cpu``: the extractor
    made for the pass holds it (on a training rank: that rank's GPU)."""
    import torch
    from eval_testing import spy_inception_devices

    devices = spy_inception_devices(monkeypatch)
    images = emoji_set[0][:4]  # (4, 64, 64, 3) uint8
    reference_stats(images, tmp_path / "cache", batch_size=4, device=torch.device("cpu", 0))
    latents = images.transpose(0, 3, 1, 2).astype(np.float16)  # stand-in latents (N, C, h, w)
    decoded_reference_stats(latents, lambda chunk: chunk.astype(np.uint8).transpose(0, 2, 3, 1), "vae", tmp_path / "d",
                            batch_size=4, device=torch.device("cpu", 0))
    assert devices == [torch.device("cpu", 0)] * 2


def test_a_sharded_reference_outside_a_process_group_is_refused_before_any_work(tmp_path, emoji_set):
    """Each rank would take its share for the whole set and cache those statistics under the set's key."""
    latents = emoji_set[0][:4].transpose(0, 3, 1, 2).astype(np.float16)  # (4, 3, 64, 64)
    decoded: list[int] = []

    def decode(chunk: np.ndarray) -> np.ndarray:
        decoded.append(len(chunk))
        return chunk.astype(np.uint8).transpose(0, 2, 3, 1)

    with pytest.raises(ConfigError, match="world=2: a sharded evaluation needs an initialised torch.distributed"):
        decoded_reference_stats(latents, decode, "vae", tmp_path / "cache", rank=1, world=2)
    assert decoded == [] and not (tmp_path / "cache").exists()
