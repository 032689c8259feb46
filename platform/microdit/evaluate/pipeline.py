"""Evaluate trained weights against a reference set: FID (and CLIP score when configured).

``evaluate_weights`` generates ``num_samples`` images from the reference set's own captions
(cycled when the set is smaller), extracts Inception features (on Ray actors when a cluster is
up, else in-process), and compares with the set's cached reference statistics. The metric is
named by the sample count (``fid_256``, ``fid_1k``...; SPEC §5).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from microdit.evaluate.fid import fid_from_stats, fid_metric_name

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
    extras: dict = field(default_factory=dict)


def evaluate_model(
    model: torch.nn.Module, cfg: EvaluationConfig, grid_path: str | Path | None = None
) -> dict:
    """{fid_N: value, clip_score?: value, eval_seconds, eval_images_per_s}; optionally a sample grid."""
    from microdit.data.manifest import load_manifest, resolve_set_path
    from microdit.data.reader import read_set
    from microdit.evaluate.clip_score import load_clip_scorer
    from microdit.evaluate.distributed import distributed_feature_stats, local_feature_stats
    from microdit.evaluate.generate import LatentDecoder, generate
    from microdit.evaluate.inception import InceptionFeatureExtractor
    from microdit.evaluate.reference import reference_stats

    started = time.perf_counter()
    directory = resolve_set_path(cfg.reference)
    manifest = load_manifest(directory)
    resolution = cfg.resolution or manifest.resolutions[0]
    rows = read_set(directory, ["latents", "text_emb", "caption"], resolution=resolution)
    decoder = LatentDecoder(manifest.vae)
    reference_images = decoder(torch.from_numpy(rows["latents"].astype(np.float32)))
    reference = reference_stats(reference_images, directory / "fid_cache", num_actors=cfg.num_actors)

    index = np.arange(cfg.num_samples) % len(rows["caption"])
    text_emb = torch.from_numpy(rows["text_emb"][index].astype(np.float32))
    captions = [rows["caption"][i] for i in index]
    latent_size = rows["latents"].shape[-1]
    gen_start = time.perf_counter()
    images = generate(
        model,
        text_emb,
        decoder,
        latent_size,
        steps=cfg.steps,
        guidance=cfg.guidance,
        seed=cfg.seed,
        batch_size=cfg.batch_size,
    )
    gen_seconds = time.perf_counter() - gen_start
    batches = (images[i : i + cfg.batch_size] for i in range(0, len(images), cfg.batch_size))
    if cfg.num_actors:
        stats = distributed_feature_stats(batches, num_actors=cfg.num_actors, total=len(images))
    else:
        stats = local_feature_stats(batches, InceptionFeatureExtractor(), total=len(images))
    metrics = {
        fid_metric_name(cfg.num_samples): fid_from_stats(stats, reference.stats),
        "generation_images_per_s": len(images) / max(gen_seconds, 1e-9),
    }
    scorer = load_clip_scorer(cfg.clip_model)
    if scorer is not None:
        metrics["clip_score"] = scorer.score(images, captions)
    if grid_path is not None:
        from microdit.evaluate.grid import save_grid

        save_grid(images[:16], grid_path, captions=captions[:16])
    metrics["eval_seconds"] = time.perf_counter() - started
    log.info("evaluation: %s", metrics)
    return metrics


def evaluate_weights(weights: str | Path, cfg: EvaluationConfig, grid_path: str | Path | None = None,
                     which: str = "auto") -> dict:
    """``which``: for a checkpoint folder, its EMA or live weights (``auto``: see ``checkpoint_weights``)."""
    from microdit.train.state import load_weights

    return evaluate_model(load_weights(weights, which=which), cfg, grid_path)
