"""Predict a recipe's compute, cost and GPU memory before running it (``microdit train --dry-run``).

Throughput is either given (images/s for the whole run) or derived from an assumed MFU:
images/s = MFU x peak FLOP/s x devices / training FLOPs per image (analytic count, SPEC §6).
Memory: the analytic model (``microdit.model.memory``) of each phase on one worker, with exactly the
state the loop holds in that phase (``phases.ema_held``).
"""

from __future__ import annotations

from dataclasses import dataclass

from microdit.config.model import ModelConfig
from microdit.config.recipe import RecipeConfig
from microdit.errors import ConfigError
from microdit.model.flops import train_flops_per_image
from microdit.train.phases import ema_held


@dataclass
class PhasePrediction:
    name: str
    latent: int
    kept_tokens: int
    train_gflops_per_image: float
    images: float
    images_per_s: float
    hours: float
    device_hours: float
    dollars: float


def predict(recipe: RecipeConfig, model: ModelConfig, caption_len: int, *, assume_mfu: float | None = None,
            images_per_s: float | None = None) -> list[PhasePrediction]:
    """Per-phase FLOPs, time and dollars at the given throughput."""
    res = recipe.resources
    devices = res.billed_devices
    if images_per_s is None:
        if assume_mfu is None:
            raise ConfigError("give --assume-mfu (e.g. 0.5) or --images-per-s to predict cost")
        peak = (res.peak_flops or 0.0)
        if not peak:
            raise ConfigError(f"resources.accelerator={res.accelerator!r} has no peak FLOP/s (use_gpu="
                              f"{res.use_gpu}); give --images-per-s instead of --assume-mfu")
    rows = []
    for phase in recipe.phases:
        latent = phase.resolution // recipe.vae_factor
        flops = train_flops_per_image(model, latent, phase.mask_ratio, caption_len)
        speed = images_per_s if images_per_s is not None else assume_mfu * peak * devices / flops
        if phase.steps is not None:
            images = phase.steps * phase.batch_size
            seconds = images / speed
        elif phase.images is not None:
            images = phase.images
            seconds = images / speed
        else:
            seconds = phase.dollars / (devices * res.hourly_price) * 3600
            images = seconds * speed
        hours = seconds / 3600
        rows.append(PhasePrediction(phase.name, latent, model.kept_tokens(latent, phase.mask_ratio), flops / 1e9,
                                    images, speed, hours, hours * devices, hours * devices * res.hourly_price))
    return rows


def format_prediction(rows: list[PhasePrediction]) -> str:
    """The cost table: wall hours of the run, device-hours billed (wall x devices) and dollars."""
    from microdit.sweep.accounting import usd

    header = f"{'phase':<18}{'latent':>7}{'tokens':>8}{'GFLOP/img':>11}{'images':>14}{'img/s':>10}" \
             f"{'wall_hours':>12}{'device_hours':>14}{'cost':>13}"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r.name:<18}{r.latent:>7}{r.kept_tokens:>8}{r.train_gflops_per_image:>11.1f}"
                     f"{r.images:>14,.0f}{r.images_per_s:>10.1f}{r.hours:>12.2f}{r.device_hours:>14.2f}"
                     f"{usd(r.dollars):>13}")
    lines.append(f"{'total':<18}{'':>7}{'':>8}{'':>11}{sum(r.images for r in rows):>14,.0f}{'':>10}"
                 f"{sum(r.hours for r in rows):>12.2f}{sum(r.device_hours for r in rows):>14.2f}"
                 f"{usd(sum(r.dollars for r in rows)):>13}")
    return "\n".join(lines)


def _memory_kwargs(recipe: RecipeConfig, index: int) -> dict:
    """``estimate_memory`` settings of phase ``index`` beyond its shape: the run's strategy, world size,
    precision switches, accumulation, and exactly the state the loop holds then (``ema_held``)."""
    phase, res = recipe.phases[index], recipe.resources
    workers = max(res.num_workers, 1)
    return dict(caption_len=recipe.caption_len, precision="fp32" if res.precision == "fp32" else "bf16",
                strategy=res.strategy, world_size=workers, ema=ema_held(recipe, index), masking=phase.masking,
                low_precision_norms=res.low_precision_norms, activation_checkpointing=res.activation_checkpointing,
                accumulation=phase.accumulation(workers))


def phase_memory(recipe: RecipeConfig, index: int, micro_batch: int | None = None,
                 model_config: ModelConfig | None = None):
    """The memory model's peak (a ``MemoryEstimate``) for one worker of phase ``index`` at its
    micro-batch (or ``micro_batch``)."""
    from microdit.model.memory import estimate_memory

    phase = recipe.phases[index]
    micro = micro_batch or phase.per_worker_micro_batch(max(recipe.resources.num_workers, 1))
    return estimate_memory(model_config or recipe.architecture(), phase.resolution // recipe.vae_factor,
                           phase.mask_ratio, micro, **_memory_kwargs(recipe, index))


def format_memory(recipe: RecipeConfig, model: ModelConfig) -> str:
    """Per phase: micro-batch, EMA held, predicted peak per worker, and on an H100 whether it fits and
    the largest micro-batch that does."""
    from microdit.model.memory import GIB, H100_80GB_BYTES, format_bytes, max_micro_batch

    res = recipe.resources
    on_h100 = res.accelerator == "H100"
    header = f"{'phase':<18}{'micro-batch':>12}{'EMA':>5}{'peak/worker':>14}"
    header += f"{'fits':>6}{'largest':>9}" if on_h100 else ""
    lines = [header, "-" * len(header)]
    for index, phase in enumerate(recipe.phases):
        estimate = phase_memory(recipe, index, model_config=model)
        line = (f"{phase.name:<18}{estimate.micro_batch:>12}{'yes' if ema_held(recipe, index) else 'no':>5}"
                f"{format_bytes(estimate.total):>14}")
        if on_h100:
            largest = max_micro_batch(model, phase.resolution // recipe.vae_factor, phase.mask_ratio,
                                      capacity=H100_80GB_BYTES, **_memory_kwargs(recipe, index))
            line += f"{'yes' if estimate.fits() else 'NO':>6}{largest:>9}"
        lines.append(line)
    where = f"{res.strategy} over {max(res.num_workers, 1)} workers"
    if on_h100:
        where += f"; an 80 GB H100 holds {H100_80GB_BYTES / GIB:.2f} GiB"
    lines.append(f"({where})")
    return "\n".join(lines)
