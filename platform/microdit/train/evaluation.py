"""In-training evaluation: a small FID on every rank's share of the samples, and a sample grid.

Runs at phase ends, every ``evaluation.every_images`` images and at the spend milestones of
``train.milestones`` (SPEC §5: sweeps need an intermediate quality signal). The weights evaluated are those the phase produces (its EMA if it
runs one, else the live weights). Every rank generates and scores its share on its own device
and the feature statistics are merged exactly (``microdit.evaluate.sharded``): no rank idles in a
collective while one does all the work, and a large evaluation takes 1/world of the time. Rank 0
logs the metrics and the grid. The wall time is inside the cost clock: evaluation is billed like
training, and logged as ``eval_seconds``. Without an ``evaluation`` section, phase ends still get
a sample grid (rank 0) of the training set's first captions with fixed seeds.
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
                     device: torch.device, logger, step: int, tag: str, rank: int = 0,
                     world: int = 1) -> dict[str, float]:
    """Evaluate ``weights`` (FID if configured: every rank calls this; else only a grid: rank 0 only)
    and queue metrics + grid for MLflow (rank 0's ``logger``)."""
    from microdit.evaluate.pipeline import EvaluationConfig, evaluate_model

    if recipe.evaluation is None and rank != 0:
        return {}
    started = time.perf_counter()
    model = snapshot(model_config, weights, device)
    name = f"samples_step{step:07d}_{tag}.png"  # written by rank 0 only (the others take part in its gather)
    grid = Path(tempfile.mkdtemp(prefix="microdit-grid-")) / name if rank == 0 else Path(name)
    metrics: dict[str, float] = {}
    if recipe.evaluation is not None:
        ev = recipe.evaluation
        config = EvaluationConfig(reference=ev.reference, num_samples=ev.num_samples, steps=ev.steps,
                                  guidance=ev.guidance, seed=recipe.seed if ev.seed is None else ev.seed,
                                  clip_model=ev.clip_model)
        metrics = {k: float(v) for k, v in evaluate_model(model, config, grid_path=grid, rank=rank, world=world,
                                                          device=device).items()}
    elif recipe.tracking.sample_grid:
        sample_grid(recipe, model, grid)
    metrics["eval_seconds"] = time.perf_counter() - started
    if logger is not None and rank == 0:
        logger.metrics(metrics, step)
        if grid.is_file():
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
    device = next(model.parameters()).device  # decode where the model runs (a GPU in production)
    images = generate(model, text, LatentDecoder(manifest.vae, device), latent, steps=recipe.tracking.sample_steps,
                      guidance=recipe.tracking.sample_guidance, seed=recipe.seed)
    return save_grid(images, path, captions=rows["caption"][:count])
