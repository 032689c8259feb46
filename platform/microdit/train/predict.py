"""Predict a recipe's compute and cost before running it (``microdit train --dry-run``).

Throughput is either given (images/s for the whole run) or derived from an assumed MFU:
images/s = MFU x peak FLOP/s x devices / training FLOPs per image (analytic count, SPEC §6).
"""

from __future__ import annotations

from dataclasses import dataclass

from microdit.config.model import ModelConfig
from microdit.config.recipe import RecipeConfig
from microdit.errors import ConfigError
from microdit.model.flops import train_flops_per_image


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
