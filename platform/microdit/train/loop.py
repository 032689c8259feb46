"""``train_loop_per_worker``: what every Ray Train worker runs (SPEC §2, §4).

Phase by phase: stream the exact real/synthetic mix, EDM loss with the phase's noise
distribution and mask ratio, gradient accumulation to the global batch, AdamW with warmup +
cosine/constant LR, global-norm clipping, EMA by half-life in images, cost accounting, logging
(rank 0, asynchronous), checkpoints every N steps and at phase ends. Randomness (noise levels,
noise, masks, caption dropout) is drawn from a generator seeded by (seed, rank, step), so a
resumed run draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

import contextlib
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import ray.train
import torch

from microdit.config.model import ModelConfig
from microdit.config.recipe import PhaseConfig, RecipeConfig
from microdit.diffusion import EDMDenoiser, caption_dropout, edm_loss
from microdit.model import MicroDiT
from microdit.model.flops import train_flops_per_image
from microdit.tracking import AsyncLogger
from microdit.train.cost import CostMeter
from microdit.train.ema import EMA
from microdit.train.evaluation import evaluate_and_log
from microdit.train.parallel import (
    all_gather_objects,
    all_reduce_mean,
    any_rank,
    full_state_dicts,
    load_full_state_dicts,
    wrap_model,
)
from microdit.train.schedule import learning_rate
from microdit.train.state import WEIGHTS_FILE, Progress, load_state, restore_rng, save_state, save_weights


class StopTraining(Exception):
    """Raised inside the loop to end it cleanly on every rank (non-finite loss)."""


def step_generator(seed: int, rank: int, step: int, micro: int, device: torch.device) -> torch.Generator:
    """A generator that depends only on (seed, rank, step, micro-batch): resume-exact randomness."""
    mixed = (seed * 1_000_003 + rank * 10_007 + step * 101 + micro) % (2**63 - 1)
    return torch.Generator(device=device).manual_seed(mixed)


def phase_total_steps(phase: PhaseConfig) -> int | None:
    if phase.steps is not None:
        return phase.steps
    if phase.images is not None:
        return math.ceil(phase.images / phase.batch_size)
    return None


def build_optimizer(model: torch.nn.Module, recipe: RecipeConfig) -> torch.optim.Optimizer:
    """AdamW; weight decay on matrices only (norm scales and biases are not decayed).
    Expert weights get ``optimizer.moe_lr_scale`` (the official code meant 0.5; default 1)."""
    groups: dict[tuple[bool, bool], list] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_expert = ".mlp.w1" in name and param.ndim == 3 or ".mlp.w2" in name and param.ndim == 3
        groups.setdefault((param.ndim >= 2, is_expert), []).append(param)
    opt = recipe.optimizer
    param_groups = [
        {"params": params, "weight_decay": opt.weight_decay if decay else 0.0,
         "lr_scale": opt.moe_lr_scale if expert else 1.0}
        for (decay, expert), params in groups.items()
    ]
    return torch.optim.AdamW(param_groups, lr=recipe.phases[0].lr, betas=opt.betas, eps=opt.eps)


def _context() -> tuple[int, int, torch.device]:
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    try:
        device = ray.train.torch.get_device()
    except Exception:  # in-process (num_workers=0) runs have no Train device assignment
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return rank, world, device


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any]:
    recipe = RecipeConfig.from_dict(config["recipe"])
    model_config = ModelConfig.from_dict(config["model_config"])
    rank, world, device = _context()
    if device.type == "cpu":
        torch.set_num_threads(recipe.resources.torch_threads)
    use_bf16 = recipe.resources.precision == "bf16" or (recipe.resources.precision == "auto" and device.type == "cuda")

    torch.manual_seed(recipe.seed)  # identical initial weights on every rank
    model = MicroDiT(model_config).to(device)
    optimizer = build_optimizer(model, recipe)
    uses_ema = any(p.ema_half_life_images for p in recipe.phases)
    ema = EMA(model) if uses_ema else None
    cost = CostMeter(recipe.resources.hourly_price, recipe.resources.billed_devices, recipe.resources.peak_flops)
    progress = Progress()

    train_model = wrap_model(model, recipe.resources, device, world)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = load_state(directory)
        load_full_state_dicts(model, optimizer, state["model"], state["optimizer"], world)
        if ema is not None and state["ema"] is not None:
            ema.load_state_dict(state["ema"])
        progress = Progress(**state["progress"])
        cost.load_state_dict(state["cost"])
        restore_rng(state["rng"])
    denoiser = EDMDenoiser(train_model)
    logger = AsyncLogger(config["mlflow_uri"], config["mlflow_run_id"]) if rank == 0 and config.get("mlflow_run_id") else None
    stop_reason = None
    first_step_wall: list[float] = []  # wall clock (time.time) when this process finished its first step
    config["_first_step_wall"] = first_step_wall
    try:
        cost.start()
        while not progress.finished and progress.phase < len(recipe.phases):
            phase = recipe.phases[progress.phase]
            stop_reason = _run_phase(recipe, phase, config, rank, world, device, model, train_model, denoiser,
                                     optimizer, ema, cost, progress, logger, use_bf16, model_config)
            if stop_reason:
                break
    except StopTraining as err:
        stop_reason = str(err)
    finally:
        errors = logger.close() if logger else []

    result = {"first_step_wall": first_step_wall[0] if first_step_wall else None,
              "global_step": progress.global_step, "images_seen": progress.images_seen,
              "cost_usd": cost.dollars, "gpu_hours": cost.device_hours, "phase": progress.phase,
              "finished": progress.finished, "stop_reason": stop_reason, "logging_errors": errors}
    if rank == 0 and progress.finished:
        weights = Path(config["output_dir"]) / WEIGHTS_FILE
        weights.parent.mkdir(parents=True, exist_ok=True)
        state_dict = ema.shadow if ema is not None and ema.updates else full_state_dicts(model, optimizer, 1)[0]
        save_weights(weights, {k: v.detach().float().cpu() for k, v in state_dict.items()},
                     model_config.to_dict(), {"ema": bool(ema and ema.updates), **result})
        result["weights"] = str(weights)
    return result


def _run_phase(recipe, phase, config, rank, world, device, model, train_model, denoiser, optimizer, ema, cost,
               progress, logger, use_bf16, model_config) -> str | None:
    from microdit.train.feed import open_stream

    total_steps = phase_total_steps(phase)
    micro = phase.per_worker_micro_batch(world)
    accumulation = phase.accumulation(world)
    latent = phase.resolution // recipe.vae_factor
    kept = model_config.kept_tokens(latent, phase.mask_ratio)
    flops_per_image = train_flops_per_image(model_config, latent, phase.mask_ratio, config["caption_len"])
    position = progress.data_positions[rank] if rank < len(progress.data_positions) else None
    debug = recipe.debug
    record_ids = debug.get("record_ids_dir")
    stream = open_stream(recipe, phase, rank, world, micro, position, with_ids=bool(record_ids))
    batches = iter(stream)
    ema_decay = phase.ema_decay_per_step()
    window: dict[str, float] = {}

    while True:
        if total_steps is not None and progress.phase_step >= total_steps:
            break
        over_budget = (phase.dollars is not None and progress.phase_dollars >= phase.dollars) or run_over_budget(
            recipe, cost, progress)
        if any_rank(over_budget, device, world):
            break
        if debug.get("fail_at_step") == progress.global_step and rank == world - 1:
            marker = Path(config["output_dir"]) / f"failed_once_at_{progress.global_step}"
            if not marker.exists():
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.touch()
                raise RuntimeError(f"injected failure at step {progress.global_step} (debug.fail_at_step)")

        for group in optimizer.param_groups:
            group["lr"] = learning_rate(phase, progress.phase_step, total_steps) * group["lr_scale"]
        loss_sum = 0.0
        router: dict[str, float] = {}
        for m in range(accumulation):
            batch = next(batches)
            if record_ids:
                _record_ids(record_ids, rank, progress, m, batch["id"])
            x0 = batch["latent"].to(device, non_blocking=True)
            y = batch["text_emb"].to(device, non_blocking=True)
            generator = step_generator(recipe.seed, rank, progress.global_step, m, device)
            y = caption_dropout(y, phase.caption_dropout, generator)
            sync = contextlib.nullcontext() if m == accumulation - 1 or not hasattr(train_model, "no_sync") \
                else train_model.no_sync()
            with sync, torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                out = edm_loss(denoiser, x0, y, p_mean=phase.p_mean, p_std=phase.p_std,
                               mask_ratio=phase.mask_ratio, generator=generator)
                loss = out.loss
                if debug.get("nan_at_step") == progress.global_step:
                    loss = loss * float("nan")
                (loss / accumulation).backward()
            loss_sum += loss.detach().float().item() / accumulation
            for key, value in out.output.router_stats.items():
                router[key] = router.get(key, 0.0) + float(value) / accumulation

        mean_loss = all_reduce_mean(loss_sum, device, world)
        if not math.isfinite(mean_loss):
            optimizer.zero_grad(set_to_none=True)
            raise StopTraining(f"non-finite loss {mean_loss} at step {progress.global_step} "
                               f"(phase {progress.phase} '{phase.name}', phase step {progress.phase_step})")
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), phase.grad_clip or float("inf"))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

        if not config["_first_step_wall"]:
            config["_first_step_wall"].append(time.time())
        images = phase.batch_size
        before = cost.dollars
        cost.step(images, kept * images, flops_per_image * images)
        progress.phase_dollars += cost.dollars - before
        progress.global_step += 1
        progress.phase_step += 1
        progress.phase_images += images
        progress.images_seen += images
        if ema is not None and ema_decay is not None and progress.phase_images > phase.ema_start_images:
            if not progress.phase_ema_started:
                ema.reset(model)
                progress.phase_ema_started = True
            ema.update(model, ema_decay)

        window["loss"] = window.get("loss", 0.0) + mean_loss
        window["grad_norm"] = window.get("grad_norm", 0.0) + float(grad_norm)
        window["count"] = window.get("count", 0.0) + 1
        for key, value in router.items():
            window[key] = window.get(key, 0.0) + value
        phase_done = total_steps is not None and progress.phase_step >= total_steps
        if progress.global_step % recipe.tracking.log_every_steps == 0 or phase_done:
            count = window.pop("count")
            metrics = {k: v / count for k, v in window.items()}
            metrics.update(cost.window())
            metrics.update({"lr": optimizer.param_groups[0]["lr"] / optimizer.param_groups[0]["lr_scale"],
                            "phase": float(progress.phase), "step": float(progress.global_step)})
            if logger:
                logger.metrics(metrics, progress.global_step)
            window = {}
            if progress.global_step % recipe.tracking.checkpoint_every_steps != 0 and not phase_done:
                ray.train.report(metrics)
        every = recipe.evaluation.every_images if recipe.evaluation else None
        crossed = every is not None and progress.images_seen // every != (progress.images_seen - images) // every
        at_end = phase_done and (recipe.evaluation is None or recipe.evaluation.at_phase_end)
        if rank == 0 and (crossed or at_end):
            weights = ema.shadow if ema is not None and ema.updates else model.state_dict()
            evaluate_and_log(recipe, model_config, weights, device, logger, progress.global_step,
                             f"phase{progress.phase}" if phase_done else "interval")
        if progress.global_step % recipe.tracking.checkpoint_every_steps == 0 or phase_done:
            if phase_done:
                _end_phase(progress, recipe)
            _checkpoint(stream, progress, rank, world, device, model, optimizer, ema, cost, model_config,
                        {"step": progress.global_step, "images_seen": progress.images_seen, "cost_usd": cost.dollars})
        if phase_done:
            break
    stream.close()
    if phase.steps is None and phase.images is None:  # a dollar-length phase ends here
        _end_phase(progress, recipe)
        _checkpoint(stream, progress, rank, world, device, model, optimizer, ema, cost, model_config,
                    {"step": progress.global_step, "images_seen": progress.images_seen, "cost_usd": cost.dollars})
    if run_over_budget(recipe, cost, progress):
        progress.finished = True
        return "run budget reached (max_dollars / max_images)"
    return None


def _record_ids(directory: str, rank: int, progress: Progress, micro: int, ids: list[str]) -> None:
    """``debug.record_ids_dir``: append one JSON line per micro-batch to ``ids_rank<rank>.jsonl``.
    A retried attempt appends again, so replayed steps appear twice (the last line per step wins)."""
    path = Path(directory) / f"ids_rank{rank}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    line = {"phase": progress.phase, "step": progress.global_step, "micro": micro, "ids": list(ids)}
    with path.open("a") as handle:
        handle.write(json.dumps(line) + "\n")


def run_over_budget(recipe: RecipeConfig, cost: CostMeter, progress: Progress) -> bool:
    return (recipe.max_dollars is not None and cost.dollars >= recipe.max_dollars) or (
        recipe.max_images is not None and progress.images_seen >= recipe.max_images)


def _end_phase(progress: Progress, recipe: RecipeConfig) -> None:
    progress.phase += 1
    progress.phase_step = progress.phase_images = 0
    progress.phase_dollars = 0.0
    progress.phase_ema_started = False
    progress.finished = progress.phase >= len(recipe.phases)


def _checkpoint(stream, progress, rank, world, device, model, optimizer, ema, cost, model_config, metrics) -> None:
    """Gather every rank's stream position, then rank 0 writes and reports the checkpoint."""
    positions = all_gather_objects(stream.state_dict(), world)
    progress.data_positions = positions
    model_state, optimizer_state = full_state_dicts(model, optimizer, world)
    if rank != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    with tempfile.TemporaryDirectory(prefix="microdit-ckpt-") as directory:
        save_state(directory, model_state=model_state, optimizer_state=optimizer_state,
                   ema_state=ema.state_dict() if ema else None,
                   progress=progress, cost_state=cost.state_dict(), model_config=model_config.to_dict())
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))
