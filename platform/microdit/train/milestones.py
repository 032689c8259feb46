"""Evaluation milestones of a run's spend: the points of its anytime curve (FID against dollars).

A recipe names them with ``evaluation.at_dollars`` / ``at_fraction`` (``RecipeConfig.milestones``); a
sweep adds the rungs of its ``cost_asha`` scheduler. When the run passes one, every rank evaluates its
share on its own device, inside the cost clock (the evaluation is billed like training), and the
reading goes to MLflow (rank 0, flushed before training goes on, so a trial the scheduler stops right
after still has it) and to Tune in one ``ray.train.report`` on every rank. Every rank decides alike:
the dollars compared are the largest spend over ranks, from the step's one sync.

The reading's cost axis is ``milestone_usd``: what the run has cost when the reading exists (training
and every evaluation so far), the x of the anytime curve and of the scheduler's rungs. Done milestones
are checkpointed (``Progress.milestones_done``), so a resumed run neither repeats nor skips one.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

TARGET_USD = "milestone_target_usd"  # the milestone's dollar target (a rung's dollars), in Tune results
TARGET_IMAGES = "milestone_target_images"
MILESTONE_USD = "milestone_usd"  # the run's spend at the reading (MLflow + Tune)
MILESTONE_IMAGES = "milestone_images"
USD_PER_S = "usd_per_s"  # what the run's devices cost per second: bills a stopped trial's last seconds
REPORTED_AT = "reported_at"  # time.time() at the report (the worker's clock)


def due_milestones(milestones: Sequence[tuple[str, float]], done: Sequence[int], run_dollars: float,
                   images_seen: int) -> list[int]:
    """Indices of the milestones reached (dollars spent >= target, or images seen >= target) and not done."""
    reached = []
    for index, (unit, target) in enumerate(milestones):
        value = run_dollars if unit == "dollars" else images_seen
        if index not in done and value >= target:
            reached.append(index)
    return reached


def milestone_readings(milestones: Sequence[tuple[str, float]], due: Sequence[int], evaluation: dict[str, float],
                       run_usd: float, images_seen: int, usd_per_s: float) -> list[dict[str, float]]:
    """One Tune result per milestone reached (a step can pass two): the evaluation's metrics, the
    milestone's target, and the run's spend and images at the reading."""
    results = []
    for index in due:
        unit, target = milestones[index]
        results.append({**evaluation, "milestone": float(index),
                        TARGET_USD if unit == "dollars" else TARGET_IMAGES: float(target),
                        MILESTONE_USD: run_usd, MILESTONE_IMAGES: float(images_seen), "cost_usd": run_usd,
                        "images_seen": float(images_seen), USD_PER_S: usd_per_s, REPORTED_AT: time.time()})
    return results


def milestone_position(reading: dict[str, float]) -> dict[str, float]:
    """Where on the curve a reading lies, for MLflow (its metrics are logged at the same step)."""
    return {k: reading[k] for k in (MILESTONE_USD, MILESTONE_IMAGES, TARGET_USD, TARGET_IMAGES) if k in reading}
