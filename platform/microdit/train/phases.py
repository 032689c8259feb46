"""Phase-transition decisions of the training loop, as plain functions (testable without Ray).

At a phase's first step (``phase_step == 0``, also when a run resumes from the checkpoint written
at the previous phase's end):
- the EMA update count restarts, so the weights a phase produces are *its* EMA if it ran one,
  else its live weights (never an earlier phase's average);
- ``optimizer_state: reset`` clears AdamW's moments and step counter (the official 256 -> 512 px
  transition loads weights only); ``keep`` carries them over (official 1 -> 2 and 3 -> 4);
- the data stream continues from the previous phase's position only when both phases stream the
  same data mix; a phase with other sets or another synthetic fraction starts its stream fresh.

What a phase holds in GPU memory is decided here too (``ema_held``), so the training loop and the
memory model that sizes a recipe's micro-batches (``predict.phase_memory``) count the same state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from microdit.config.recipe import RecipeConfig


@dataclass(frozen=True)
class PhaseStart:
    reset_ema_updates: bool
    reset_optimizer_state: bool


def phase_start_actions(recipe: RecipeConfig, index: int, phase_step: int) -> PhaseStart:
    """What to reset before running phase ``index`` from ``phase_step`` (nothing when resuming mid-phase)."""
    fresh = phase_step == 0
    reset_optimizer = fresh and index > 0 and recipe.phases[index].optimizer_state == "reset"
    return PhaseStart(reset_ema_updates=fresh, reset_optimizer_state=reset_optimizer)


def data_position_for_phase(recipe: RecipeConfig, index: int, phase_step: int, positions: list[Any],
                            rank: int) -> Any | None:
    """This rank's saved stream position if it belongs to phase ``index``'s data mix, else None (start fresh)."""
    if rank >= len(positions):
        return None
    if phase_step == 0 and index > 0 and recipe.phase_data(index) != recipe.phase_data(index - 1):
        return None
    return positions[rank]


def produced_weights_source(ema_updates_this_phase: int) -> Literal["ema", "live"]:
    """The rule for final weights, evaluation and sample grids: the phase's EMA if it updated one."""
    return "ema" if ema_updates_this_phase > 0 else "live"


def ema_held(recipe: RecipeConfig, index: int) -> bool:
    """Whether the fp32 EMA copy exists while phase ``index`` runs: only in phases that run an EMA.

    Every phase's EMA restarts from that phase's weights, so no phase needs an earlier one's: the copy
    is created when an EMA phase starts and freed when a phase without one starts (the official run
    holds none in phases 1-2, where the 256-px masked micro-batch needs the room)."""
    return 0 <= index < len(recipe.phases) and recipe.phases[index].ema_half_life_images is not None

