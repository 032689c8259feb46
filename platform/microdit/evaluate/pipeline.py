"""Evaluate trained weights against a reference set: FID (and CLIP score when configured).

``evaluate_weights`` generates ``num_samples`` images from the reference set's own captions
(cycled when the set is smaller), extracts Inception features (on Ray actors when a cluster is
up, else in-process), and compares with the set's cached reference statistics. The metric is
named by the sample count (``fid_256``, ``fid_1k``...; SPEC §5). With ``bootstrap`` > 0 (and
in-process features) it comes with ``<name>_std``, ``<name>_ci_low`` and ``<name>_ci_high``:
the resampling std and 95 % interval of ``microdit.evaluate.uncertainty.fid_uncertainty``.

Everything runs on the evaluation's device: the VAE decode, both Inception passes (reference and
samples) and the CLIP scorer. The reference statistics are cached under a key naming the decode
precision and device type (``reference_decoder_id``): a bf16 GPU decode of the reference does not
reuse fp32 CPU statistics, which would offset every FID against bf16 GPU samples.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from microdit.console import Progress
from microdit.errors import ConfigError
from microdit.evaluate.fid import fid_from_stats, fid_metric_name
from microdit.evaluate.uncertainty import fid_uncertainty

if TYPE_CHECKING:
    from microdit.evaluate.generate import LatentDecoder
    from microdit.evaluate.inception import InceptionFeatureExtractor

log = logging.getLogger(__name__)


@dataclass
class EvaluationConfig:
    reference: str = "demo_real_heldout"  # a prepared set (path or name)
    num_samples: int = 256
    steps: int = 30
    guidance: float = 5.0
    seed: int = 0
    clip_model: str | None = None
    resolution: int | None = None  # pixels; None = the set's first resolution
    batch_size: int = 64
    num_actors: int = 0  # Inception actors on Ray (0 = in-process)
    bootstrap: int = 200  # FID resamples for <fid>_std / _ci_low / _ci_high (0 = none; in-process only)
    progress: bool = False  # progress views on rank 0 (the CLI); off in Train workers and sweeps
    extras: dict = field(default_factory=dict)


class _Recording:
    """An Inception extractor that also keeps every feature batch it returns (in ``rows``)."""

    def __init__(self, extractor, rows: list[np.ndarray]):
        self.extractor, self.rows = extractor, rows

    def __call__(self, images) -> np.ndarray:
        features = self.extractor(images)  # (n, 2048)
        self.rows.append(np.asarray(features))
        return features


def reference_decoder_id(vae: dict, decoder: LatentDecoder) -> str:
    """The cache key's decoder part: the manifest's VAE entry (any key order), the decode dtype (None
    for ``pixels``) and the device type the reference is decoded and featurised on (GPU kernels
    round differently from CPU ones)."""
    return json.dumps({"vae": vae, "precision": decoder.precision, "device": decoder.device.type}, sort_keys=True)


def prepare_reference(cfg: EvaluationConfig, device: str | torch.device = "cpu", *, rank: int = 0, world: int = 1,
                      extractor: InceptionFeatureExtractor | None = None):
    """The reference set's rows (latents, captions, text states), its decoder and its FID statistics.

    The statistics are cached beside the set, keyed by content: a sweep calls this once in the
    driver before its first trial, so no trial on the same device type pays for the reference
    Inception pass. The key is
    the latents and ``reference_decoder_id``: a hit decodes nothing, a miss decodes
    ``cfg.batch_size`` latents at a time straight into the feature moments (never the whole
    decoded set in memory), on ``device``. With ``world`` > 1 every rank calls this and a miss is
    split over the ranks (``decoded_reference_stats``). ``extractor``: an Inception extractor on
    ``device`` to reuse (one is made when None)."""
    from microdit import storage
    from microdit.data.manifest import load_manifest, resolve_set_path
    from microdit.data.reader import read_set
    from microdit.evaluate.generate import LatentDecoder
    from microdit.evaluate.reference import decoded_reference_stats

    directory = resolve_set_path(cfg.reference)
    manifest = load_manifest(directory)
    resolution = cfg.resolution or manifest.resolutions[0]
    rows = read_set(directory, ["latents", "text_emb", "caption"], resolution=resolution)
    decoder = LatentDecoder(manifest.vae, device)  # decodes the reference and, later, the generated latents
    reference = decoded_reference_stats(
        rows["latents"],
        lambda chunk: decoder(torch.from_numpy(chunk.astype(np.float32))),  # (B, C, h, w) -> uint8 (B, H, W, 3)
        reference_decoder_id(manifest.vae, decoder),
        storage.join(directory, "fid_cache"),
        batch_size=cfg.batch_size,
        extractor=extractor,
        num_actors=cfg.num_actors,
        progress=cfg.progress and rank == 0,
        device=device,
        rank=rank,
        world=world,
    )
    return rows, decoder, reference


def evaluate_model(
    model: torch.nn.Module, cfg: EvaluationConfig, grid_path: str | Path | None = None, *,
    rank: int = 0, world: int = 1, device: str | torch.device | None = None,
) -> dict:
    """{fid_N, fid_N_std/_ci_low/_ci_high?, clip_score?, generation_images_per_s, eval_seconds}; a grid.

    With ``world`` > 1 (inside an initialised process group, e.g. every rank of a Train run) each
    rank generates and scores its share of the samples on ``device`` and the statistics are merged
    exactly (``microdit.evaluate.sharded``); every rank returns the same metrics, rank 0 writes the
    grid. A missing reference cache is built the same way, each rank its share, and written by rank 0."""
    from microdit.evaluate.clip_score import load_clip_scorer
    from microdit.evaluate.distributed import distributed_feature_stats, local_feature_stats
    from microdit.evaluate.generate import generate
    from microdit.evaluate.inception import InceptionFeatureExtractor
    from microdit.evaluate.sharded import (
        all_reduce_stats,
        all_reduce_sum,
        gather_first_images,
        gather_in_order,
        require_process_group,
        shard_range,
    )

    if cfg.bootstrap < 0 or cfg.bootstrap == 1:
        raise ConfigError(f"bootstrap: number of FID resamples, 0 (none) or >= 2, got {cfg.bootstrap}")
    if world > 1 and cfg.num_actors:
        raise ConfigError("num_actors: a sharded (per-rank) evaluation extracts features on each rank; use 0")
    require_process_group(world)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    started = time.perf_counter()
    # one network on the device for the reference pass (on a cache miss) and the samples
    extractor = None if cfg.num_actors else InceptionFeatureExtractor(batch_size=cfg.batch_size, device=device)
    rows, decoder, reference = prepare_reference(cfg, device, rank=rank, world=world, extractor=extractor)

    mine = shard_range(cfg.num_samples, rank, world)
    index = np.arange(mine.start, mine.stop) % len(rows["caption"])
    text_emb = torch.from_numpy(rows["text_emb"][index].astype(np.float32))
    captions = [rows["caption"][i] for i in index]
    latent_size = rows["latents"].shape[-1]
    shown = cfg.progress and rank == 0
    gen_start = time.perf_counter()
    # Batch by batch only to show progress: every sample has its own noise, so the images are the same.
    chunk = cfg.batch_size if shown else max(len(index), 1)
    parts = []
    with Progress("generate", len(index), "img", enabled=shown) as bar:
        for start in range(0, max(len(index), 1), chunk):
            parts.append(generate(model, text_emb[start : start + chunk], decoder, latent_size, steps=cfg.steps,
                                  guidance=cfg.guidance, seed=cfg.seed, batch_size=cfg.batch_size,
                                  first_index=mine.start + start))
            bar.update(start + len(parts[-1]))
    images = np.concatenate(parts)
    gen_seconds = time.perf_counter() - gen_start
    batches = (images[i : i + cfg.batch_size] for i in range(0, len(images), cfg.batch_size))
    kept: list[np.ndarray] = []  # in-process feature rows, for the resampled FID
    if cfg.num_actors:
        stats = distributed_feature_stats(batches, num_actors=cfg.num_actors, total=len(images), progress=shown)
    else:
        stats = local_feature_stats(batches, _Recording(extractor, kept), total=len(images), progress=shown)
    stats = all_reduce_stats(stats, world)
    name = fid_metric_name(cfg.num_samples)
    if cfg.bootstrap and stats.count >= 4 and not cfg.num_actors:
        features = np.concatenate(gather_in_order(np.concatenate(kept) if kept else np.zeros((0, 2048)), world))
        start = time.perf_counter()
        spread = fid_uncertainty(features, reference.stats, num_resamples=cfg.bootstrap, seed=cfg.seed,
                                 generated=stats)
        metrics = spread.metrics(name)  # name: fid_from_stats(stats, reference.stats), as without resampling
        log.info("%s: %d resamples (%s) in %.1f s", name, cfg.bootstrap, spread.method, time.perf_counter() - start)
    else:
        if cfg.bootstrap and cfg.num_actors:
            log.warning("%s: no std/interval: Ray actors return moments, not the feature rows resampling needs",
                        name)
        elif cfg.bootstrap:  # asked for, so say why it is missing
            log.warning("%s: no std/interval: %d samples, resampling needs at least 4", name, stats.count)
        metrics = {name: fid_from_stats(stats, reference.stats)}
    metrics["generation_images_per_s"] = all_reduce_sum(len(images) / max(gen_seconds, 1e-9), world)
    scorer = load_clip_scorer(cfg.clip_model, device)
    if scorer is not None:  # a mean over samples: each rank's sum, added
        local = scorer.score(images, captions) * len(images) if len(images) else 0.0
        metrics["clip_score"] = all_reduce_sum(local, world) / cfg.num_samples
    if grid_path is not None:
        first = gather_first_images(images, mine.start, 16, world)
        if rank == 0:
            from microdit.evaluate.grid import save_grid

            save_grid(first, grid_path, captions=[rows["caption"][i % len(rows["caption"])] for i in range(len(first))])
    metrics["eval_seconds"] = time.perf_counter() - started
    log.info("evaluation: %s", metrics)
    return metrics


def evaluate_weights(weights: str | Path, cfg: EvaluationConfig, grid_path: str | Path | None = None,
                     which: str = "auto") -> dict:
    """``which``: for a checkpoint folder, its EMA or live weights (``auto``: see ``checkpoint_weights``)."""
    from microdit.train.state import load_weights

    return evaluate_model(load_weights(weights, which=which), cfg, grid_path)
