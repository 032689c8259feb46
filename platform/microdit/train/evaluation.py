"""Rank 0's in-training evaluation: a small FID and a sample grid, logged to the run's MLflow record.

Runs at phase ends and every ``evaluation.every_images`` images (SPEC §5: sweeps need an
intermediate quality signal). The weights evaluated are the EMA when one is being tracked,
else the live model. The other ranks wait at their next collective meanwhile, and the wall
time is inside the cost clock: evaluation is billed like training, and logged as
``eval_seconds``. Without an ``evaluation`` section, phase ends still get a sample grid of the
training set's first captions with fixed seeds.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from microdit.config.model import ModelConfig
from microdit.config.recipe import RecipeConfig

log = logging.getLogger(__name__)
GRID_SAMPLES = 16


def snapshot(model_config: ModelConfig, weights: dict[str, torch.Tensor], device: torch.device) -> torch.nn.Module:
    from microdit.model import MicroDiT

    model = MicroDiT(model_config)
    model.load_state_dict({k: v.detach().to("cpu", torch.float32) for k, v in weights.items()})
    return model.to(device).eval()


def evaluate_and_log(recipe: RecipeConfig, model_config: ModelConfig, weights: dict[str, torch.Tensor],
                     device: torch.device, logger, step: int, tag: str) -> dict[str, float]:
    """Evaluate ``weights`` (FID if configured, else only a grid) and queue metrics + grid for MLflow."""
    from microdit.evaluate.pipeline import EvaluationConfig, evaluate_model

    started = time.perf_counter()
    model = snapshot(model_config, weights, device)
    grid = Path(tempfile.mkdtemp(prefix="microdit-grid-")) / f"samples_step{step:07d}_{tag}.png"
    metrics: dict[str, float] = {}
    if recipe.evaluation is not None:
        ev = recipe.evaluation
        config = EvaluationConfig(reference=ev.reference, num_samples=ev.num_samples, steps=ev.steps,
                                  guidance=ev.guidance, seed=recipe.seed, clip_model=ev.clip_model)
        metrics = {k: float(v) for k, v in evaluate_model(model, config, grid_path=grid).items()}
    elif recipe.tracking.sample_grid:
        sample_grid(recipe, model, grid)
    metrics["eval_seconds"] = time.perf_counter() - started
    if logger is not None:
        logger.metrics(metrics, step)
        if grid.exists():
            logger.artifact(str(grid), "samples")
    log.info("evaluation at step %d (%s): %s", step, tag, metrics)
    return metrics


def sample_grid(recipe: RecipeConfig, model: torch.nn.Module, path: Path) -> Path:
    """Fixed prompts (the set's first 16 captions, read from its first row group: a phase end never
    scans a multi-TB training set) and fixed seeds, decoded with the set's VAE."""
    from microdit.data.manifest import load_manifest, resolve_set_path
    from microdit.data.reader import read_set
    from microdit.evaluate.generate import LatentDecoder, generate
    from microdit.evaluate.grid import save_grid

    ref = recipe.data.real or recipe.data.synthetic
    manifest = load_manifest(resolve_set_path(ref))
    resolution = recipe.phases[-1].resolution if recipe.phases[-1].resolution in manifest.resolutions \
        else manifest.resolutions[0]
    rows = read_set(ref, ["text_emb", "caption"], resolution=resolution, max_rows=GRID_SAMPLES)  # never a full scan
    count = min(GRID_SAMPLES, len(rows["caption"]))
    text = torch.from_numpy(rows["text_emb"][:count].astype(np.float32))
    latent = resolution // recipe.vae_factor
    images = generate(model, text, LatentDecoder(manifest.vae), latent, steps=recipe.tracking.sample_steps,
                      guidance=recipe.tracking.sample_guidance, seed=recipe.seed)
    return save_grid(images, path, captions=rows["caption"][:count])
