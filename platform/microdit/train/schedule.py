"""Learning-rate schedule per phase: linear warmup, then constant or cosine down to a floor."""

from __future__ import annotations

import math

from microdit.config.recipe import PhaseConfig


def learning_rate(phase: PhaseConfig, step: int, total_steps: int | None,
                  spent_fraction: float | None = None) -> float:
    """LR at ``step`` (0-based, within the phase).

    Cosine runs over the phase length: its steps when the length is in steps or images, else (a
    dollar-length phase) over ``spent_fraction``, the fraction of the phase's dollars already spent
    (the same on every rank), so the LR reaches the floor exactly when the budget runs out."""
    if phase.warmup_steps and step < phase.warmup_steps:
        return phase.lr * (step + 1) / phase.warmup_steps
    if phase.lr_schedule == "constant":
        return phase.lr
    if total_steps:
        span = max(total_steps - phase.warmup_steps, 1)
        progress = min(max(step - phase.warmup_steps, 0) / span, 1.0)
    elif spent_fraction is not None:
        progress = min(max(spent_fraction, 0.0), 1.0)
    else:
        raise ValueError(f"phase {phase.name!r}: a cosine schedule needs the phase length (steps, images, "
                         "or the spent fraction of a dollar-length phase)")
    floor = phase.lr * phase.lr_floor
    return floor + (phase.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))
