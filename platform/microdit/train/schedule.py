"""Learning-rate schedule per phase: linear warmup, then constant or cosine down to a floor."""

from __future__ import annotations

import math

from microdit.config.recipe import PhaseConfig


def learning_rate(phase: PhaseConfig, step: int, total_steps: int | None) -> float:
    """LR at ``step`` (0-based, within the phase). Cosine needs the phase length in steps; a phase
    measured in dollars has none, so it decays over its estimated steps or stays at lr."""
    if phase.warmup_steps and step < phase.warmup_steps:
        return phase.lr * (step + 1) / phase.warmup_steps
    if phase.lr_schedule == "constant" or not total_steps:
        return phase.lr
    span = max(total_steps - phase.warmup_steps, 1)
    progress = min(max(step - phase.warmup_steps, 0) / span, 1.0)
    floor = phase.lr * phase.lr_floor
    return floor + (phase.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))
