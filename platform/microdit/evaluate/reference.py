"""Reference statistics: Inception moments of a real image set, computed once and cached.

A reference set is fixed while many checkpoints are evaluated against it, and its statistics
cost as much as generating the same number of images' features, so they are cached as an
``.npz`` keyed by content: the sha256 of every image's bytes (and file name), the resolution
the images are brought to, and the Inception network's sha256. Renaming or moving the set
keeps the cache; changing one pixel, the resolution or the network does not.

Four sources:
- an image folder (``*.png``, ``*.jpg``, ... sorted by relative path, recursive);
- a captions+images index: a ``.jsonl`` file with one ``{"image": PATH, "caption": TEXT}`` per
  line, paths relative to the index's folder (COCO 2014 val 30K is usually shipped this way,
  with several captions per image); each image is used once, with its first caption, and the
  captions come back so generation prompts match the reference images one to one;
- an in-memory uint8 array (N, H, W, 3);
- a prepared set's latents with their decoder (``decoded_reference_stats``): keyed by the latent
  bytes and the decoder (the caller's id: the VAE, its decode precision and device type), decoded
  batch by batch only on a cache miss, so no decoded image set is ever held in memory (30K COCO
  images at 512 px would be 23 GB). Inside a process group (``rank``/``world``, e.g. the ranks of
  a training run) a miss is split like the samples: each rank decodes and featurises its
  contiguous share, the moments are summed exactly (``microdit.evaluate.sharded``) and rank 0
  writes the cache, so no rank waits minutes near a collective timeout while one does it all.

The Inception pass runs on ``device`` (the CPU unless told), the same as the samples' pass.

``resolution`` brings every image to the generation resolution first (centre crop to a
square, then PIL bicubic resize), so the reference is seen at the same detail as the samples;
Inception then resizes both to 299 the same way. ``None`` keeps images as they are.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from microdit import storage
from microdit.errors import ConfigError
from microdit.evaluate.distributed import distributed_feature_stats, local_feature_stats
from microdit.evaluate.fid import FeatureStats
from microdit.evaluate.inception import INCEPTION_SHA256, InceptionFeatureExtractor
from microdit.evaluate.sharded import (
    all_reduce_stats,
    all_reduce_sum,
    barrier,
    require_process_group,
    shard_range,
)

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CACHE_VERSION = b"microdit-reference-v1"


@dataclass
class ReferenceSet:
    """Reference statistics plus what generation needs to match them."""

    stats: FeatureStats
    captions: list[str] | None  # first caption per image, in image order; None without an index
    cache_path: str  # location (path or URI) of the cached statistics
    key: str  # sha256 hex of content + resolution + network
    from_cache: bool


def resize_square(image: np.ndarray, resolution: int) -> np.ndarray:
    """Centre-crop a uint8 (H, W, 3) image to a square and resize it (bicubic) to resolution²."""
    h, w = image.shape[:2]
    if (h, w) == (resolution, resolution):
        return image
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    pil = Image.fromarray(image[top : top + side, left : left + side])
    return np.asarray(pil.resize((resolution, resolution), Image.Resampling.BICUBIC))  # (R, R, 3)


def load_image(path: Path, resolution: int | None) -> np.ndarray:
    """One image file as uint8 (H, W, 3) RGB, optionally brought to ``resolution``."""
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"))  # (H, W, 3) uint8
    return resize_square(arr, resolution) if resolution else arr


def list_image_folder(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ConfigError(f"reference: no images ({', '.join(IMAGE_SUFFIXES)}) under '{folder}'")
    return files


def read_caption_index(index: Path) -> tuple[list[Path], list[str]]:
    """Image paths and their first captions from a ``.jsonl`` index, in first-seen order."""
    first_caption: dict[Path, str] = {}
    with open(index, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                image, caption = row["image"], row["caption"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ConfigError(
                    f"reference index '{index}' line {line_no}: expected a JSON object with "
                    f"'image' (path relative to the index) and 'caption' ({exc.__class__.__name__}: {exc})"
                ) from exc
            path = (index.parent / image).resolve()
            first_caption.setdefault(path, str(caption))
    if not first_caption:
        raise ConfigError(f"reference index '{index}' has no entries")
    missing = [p for p in first_caption if not p.is_file()]
    if missing:
        raise ConfigError(f"reference index '{index}': {len(missing)} image(s) missing, e.g. '{missing[0]}'")
    return list(first_caption), list(first_caption.values())


def _content_key(
    files: list[Path] | None, root: Path | None, array: np.ndarray | None, resolution: int | None
) -> str:
    digest = hashlib.sha256(CACHE_VERSION)
    digest.update(f"|inception={INCEPTION_SHA256}|resolution={resolution}|".encode())
    if array is not None:
        digest.update(f"array{array.shape}{array.dtype}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    else:
        for path in files:
            digest.update(os.path.relpath(path, root).encode() + b"\0")
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _file_batches(files: list[Path], resolution: int | None, batch_size: int) -> Iterator[list[np.ndarray]]:
    for start in range(0, len(files), batch_size):
        yield [load_image(p, resolution) for p in files[start : start + batch_size]]


def _array_batches(array: np.ndarray, resolution: int | None, batch_size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(array), batch_size):
        chunk = array[start : start + batch_size]  # (B, H, W, 3)
        yield np.stack([resize_square(im, resolution) for im in chunk]) if resolution else chunk


def reference_stats(
    source: str | Path | np.ndarray,
    cache_dir: str | Path,
    *,
    resolution: int | None = None,
    limit: int | None = None,
    extractor: InceptionFeatureExtractor | None = None,
    batch_size: int = 32,
    num_actors: int = 0,
    num_gpus_per_actor: float = 0,
    inception_path: str | Path | None = None,
    progress: bool = False,
    device: str | torch.device = "cpu",
) -> ReferenceSet:
    """Inception statistics of a reference set, from the cache when its content was seen before.

    ``source``: an image folder, a ``.jsonl`` captions index or a uint8 (N, H, W, 3) array.
    ``limit`` keeps the first N images (e.g. 30000 of a larger index). ``num_actors`` > 0
    extracts on a Ray actor pool (Ray must be initialised); 0 extracts in this process with
    ``extractor`` (one is created on ``device`` when None; pass one to share the loaded network).
    ``progress``: a progress view of the Inception pass (``console.Progress``).
    """
    if resolution is not None and resolution < 8:
        raise ConfigError(f"resolution: must be >= 8 pixels or None, got {resolution}")
    files: list[Path] | None = None
    root: Path | None = None
    array: np.ndarray | None = None
    captions: list[str] | None = None
    if isinstance(source, np.ndarray):
        if source.dtype != np.uint8 or source.ndim != 4 or source.shape[-1] != 3:
            raise ConfigError(
                f"reference array: expected uint8 (N, H, W, 3), got {source.dtype} {source.shape}"
            )
        array = source[:limit] if limit else source
        count = len(array)
    else:
        path = Path(source)
        if path.is_dir():
            root, files = path, list_image_folder(path)
        elif path.is_file() and path.suffix == ".jsonl":
            root = path.parent.resolve()
            files, captions = read_caption_index(path)
        else:
            raise ConfigError(
                f"reference: '{source}' is neither an image folder, a .jsonl captions index nor a uint8 array"
            )
        if limit:
            files = files[:limit]
            captions = captions[:limit] if captions is not None else None
        count = len(files)
    if count < 2:
        raise ConfigError(f"reference: FID needs at least 2 images, '{source}' gives {count}")

    key = _content_key(files, root, array, resolution)
    if array is not None:
        batches = _array_batches(array, resolution, batch_size)
    else:
        batches = _file_batches(files, resolution, batch_size)
    label = str(source) if array is None else f"array{tuple(array.shape)}"
    return _cached_stats(cache_dir, key, count, resolution, label, captions,
                         lambda: _feature_stats(batches, count, batch_size, extractor, num_actors,
                                                num_gpus_per_actor, inception_path, progress, device))


def decoded_reference_stats(
    latents: np.ndarray,
    decode: Callable[[np.ndarray], np.ndarray],
    decoder_id: str,
    cache_dir: str | Path,
    *,
    batch_size: int = 32,
    extractor: InceptionFeatureExtractor | None = None,
    num_actors: int = 0,
    num_gpus_per_actor: float = 0,
    inception_path: str | Path | None = None,
    progress: bool = False,
    device: str | torch.device = "cpu",
    rank: int = 0,
    world: int = 1,
) -> ReferenceSet:
    """Statistics of the images ``decode`` makes from ``latents`` (N, C, h, w), cached by content.

    The key covers the latent bytes and ``decoder_id`` (the VAE's manifest entry and whatever
    changes the decoded pixels or their features: decode precision, device type), so a cache hit
    decodes nothing; a miss decodes ``batch_size`` latents at a time straight into the feature
    moments (memory bounded by one batch, whatever N is). With ``world`` > 1 every rank of the
    initialised process group calls this: they agree on hit or miss, and a miss is computed in
    ``shard_range`` shares, summed on every rank and written once by rank 0."""
    count = len(latents)
    if count < 2:
        raise ConfigError(f"reference: FID needs at least 2 images, the latents give {count}")
    digest = hashlib.sha256(CACHE_VERSION)
    digest.update(f"|inception={INCEPTION_SHA256}|decoded|{decoder_id}|{latents.shape}{latents.dtype}|".encode())
    digest.update(np.ascontiguousarray(latents).tobytes())
    key, label = digest.hexdigest(), f"latents{tuple(latents.shape)}"

    def stats_of(part: np.ndarray) -> FeatureStats:  # lazy: misses only
        batches = (decode(part[i : i + batch_size]) for i in range(0, len(part), batch_size))
        return _feature_stats(batches, len(part), batch_size, extractor, num_actors, num_gpus_per_actor,
                              inception_path, progress, device)

    if world <= 1:
        return _cached_stats(cache_dir, key, count, None, label, None, lambda: stats_of(latents))
    return _sharded_cached_stats(cache_dir, key, count, label, stats_of, latents, rank, world)


def _sharded_cached_stats(cache_dir: str | Path, key: str, count: int, label: str,
                          stats_of: Callable[[np.ndarray], FeatureStats], latents: np.ndarray, rank: int,
                          world: int) -> ReferenceSet:
    """``_cached_stats`` over the ranks of a process group: one decision, each rank a share, one writer."""
    require_process_group(world)
    cache_path = _cache_path(cache_dir, key, count, None)
    cached = _load_cached(cache_path, count)
    # Every rank must take the same branch (the collectives below): one miss anywhere is a miss for all.
    if all_reduce_sum(float(cached is None), world) == 0:
        return ReferenceSet(cached, None, cache_path, key, from_cache=True)
    mine = shard_range(count, rank, world)
    stats = all_reduce_stats(stats_of(latents[mine.start : mine.stop]), world)  # exact: float64 moments add
    if rank == 0:
        _save_cached(cache_path, stats, key, count, None, label)
    barrier(world)  # the cache exists for every rank's next call
    return ReferenceSet(stats, None, cache_path, key, from_cache=False)


def _feature_stats(batches, count: int, batch_size: int, extractor, num_actors: int, num_gpus_per_actor: float,
                   inception_path, progress: bool = False, device: str | torch.device = "cpu") -> FeatureStats:
    if num_actors > 0:
        return distributed_feature_stats(
            batches,
            num_actors=num_actors,
            num_gpus_per_actor=num_gpus_per_actor,
            inception_path=inception_path,
            batch_size=batch_size,
            total=count,
            desc="reference",
            progress=progress,
        )
    extractor = extractor or InceptionFeatureExtractor(inception_path, batch_size=batch_size, device=device)
    return local_feature_stats(batches, extractor, total=count, desc="reference", progress=progress)


def _cached_stats(cache_dir: str | Path, key: str, count: int, resolution: int | None, label: str,
                  captions: list[str] | None, compute: Callable[[], FeatureStats]) -> ReferenceSet:
    """The cached statistics under ``key``, or ``compute()`` saved there (atomic writes)."""
    cache_path = _cache_path(cache_dir, key, count, resolution)
    cached = _load_cached(cache_path, count)
    if cached is not None:
        return ReferenceSet(cached, captions, cache_path, key, from_cache=True)
    stats = compute()
    _save_cached(cache_path, stats, key, count, resolution, label)
    return ReferenceSet(stats, captions, cache_path, key, from_cache=False)


def _cache_path(cache_dir: str | Path, key: str, count: int, resolution: int | None) -> str:
    return storage.join(storage.resolve(cache_dir), f"reference_{resolution or 'native'}px_{count}_{key[:16]}.npz")


def _load_cached(cache_path: str, count: int) -> FeatureStats | None:
    """The statistics cached at ``cache_path``, or None when absent or of another size."""
    if not storage.is_file(cache_path):
        return None
    stats = FeatureStats.load(cache_path)
    if stats.count != count:
        log.warning("reference stats: %s holds %d samples, expected %d; recomputing", cache_path, stats.count, count)
        return None
    log.info("reference stats: cache hit %s", cache_path)
    return stats


def _save_cached(cache_path: str, stats: FeatureStats, key: str, count: int, resolution: int | None,
                 label: str) -> None:
    stats.save(cache_path)
    storage.write_text(
        cache_path[: -len(".npz")] + ".json",
        json.dumps(
            {"source": label, "count": count, "resolution": resolution, "key": key,
             "inception_sha256": INCEPTION_SHA256},
            indent=2,
        )
    )
    log.info("reference stats: %d images -> %s", count, cache_path)
