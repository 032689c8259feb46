"""``microdit sweep SPEC --dry-run``: how many trials, what each is predicted to cost, the total.

A trial's cost comes from the analytic FLOP count of its recipe and the price table: with a
dollar budget per trial that budget is the cost; with an image budget it is images / speed,
speed = MFU x peak x devices / FLOPs per image on GPUs (or a given images/s). The answer (trials,
predicted total, budget) comes first; then grid sweeps list every trial, sampled sweeps the
space's corners (the cost range). Wall hours are per trial; the cost covers all its devices.
"""

from __future__ import annotations

import itertools

from microdit.config.recipe import RecipeConfig, deviation_from_official
from microdit.config.sweep import SweepSpec, value_label
from microdit.sweep.accounting import usd
from microdit.sweep.pareto import format_table
from microdit.train.predict import predict

DEFAULT_MFU = 0.5
DEFAULT_CPU_IMAGES_PER_S = 20.0


def trial_cost(spec: SweepSpec, values: dict, images_per_s: float | None) -> tuple[float, float]:
    """(predicted dollars, predicted hours) of one trial."""
    recipe = RecipeConfig.from_dict(spec.trial_recipe(values, "plan"))
    model = recipe.architecture()
    speed = images_per_s or (None if recipe.resources.peak_flops else DEFAULT_CPU_IMAGES_PER_S)
    rows = predict(recipe, model, recipe.caption_len, assume_mfu=None if speed else DEFAULT_MFU, images_per_s=speed)
    dollars = sum(r.dollars for r in rows)
    hours = sum(r.hours for r in rows)
    rate = recipe.resources.hourly_price * recipe.resources.billed_devices
    if spec.trial_dollars is not None:
        dollars, hours = min(dollars, spec.trial_dollars), min(hours, spec.trial_dollars / rate)
    if spec.trial_images is not None:
        images = sum(r.images for r in rows)
        if images > spec.trial_images:
            dollars, hours = dollars * spec.trial_images / images, hours * spec.trial_images / images
    return dollars, hours


def format_plan(spec: SweepSpec, images_per_s: float | None = None) -> str:
    if spec.is_grid:
        trials = spec.grid_trials()[: spec.max_trials]
        combos = [combo for combo, replicate in trials if replicate == 0]
        heading = f"grid search: {len(combos)} configurations" + (
            f" x 1 seed, then up to {spec.max_seeds} for those within noise of the best (seeds: auto; at most "
            f"{spec.num_trials()} trials)" if spec.adaptive_seeds else
            f" x {spec.seeds} seeds = {len(trials)} trials" if spec.seeds > 1 else "")
    else:
        options = [[(p.key, v) for v in (p.values if p.kind in ("grid", "choice") else p.values[:2])] for p in spec.space]
        combos = [dict(c) for c in itertools.islice(itertools.product(*options), 64)]
        heading = (f"{spec.algorithm} search: up to {spec.max_trials} trials sampled; the space's corners "
                   "(cost range) are listed")
    rows = []
    for i, values in enumerate(combos):
        dollars, hours = trial_cost(spec, values, images_per_s)
        rows.append({"#": i, **{k: value_label(v) for k, v in values.items()},
                     "pred_wall_hours": f"{hours:.3g}", "pred_cost": usd(dollars), "_usd": dollars})
    columns = ["#", *[p.key for p in spec.space], "pred_wall_hours", "pred_cost"]
    per_trial = [r["_usd"] for r in rows]
    total = max(per_trial) * spec.num_trials() if not spec.is_grid else \
        sum(per_trial[i] for i, _ in enumerate(combos)) * (spec.num_trials() / max(len(combos), 1))
    answer = f"trials: {spec.num_trials()}; predicted total: {usd(total)}" + (
        "" if spec.is_grid else " (upper bound: max_trials x the dearest corner)")
    if spec.budget_dollars is not None:
        answer += f"; sweep budget {usd(spec.budget_dollars)} (no trial starts once spent + committed would pass it)"
    lines = [answer,
             f"sweep {spec.name}: {heading}; objectives "
             f"{', '.join(f'{o.metric} ({o.mode})' for o in spec.objectives)}; max concurrent {spec.max_concurrent}",
             format_table(rows, columns)]
    schedule = schedule_note(spec)
    if schedule:
        lines.append(schedule)
    note = evaluation_protocol_note(spec)
    if note:
        lines.append(f"note: {note}")
    return "\n".join(lines)


def schedule_note(spec: SweepSpec) -> str | None:
    """Where trials are evaluated on the way (anytime readings) and what the scheduler may stop."""
    milestones = [usd(d) for d in spec.milestones_dollars()]
    fractions = [f"{f:g}" for f in sorted(set(spec.evaluation.at_fraction))]
    if not (milestones or fractions):
        return None
    where = ", ".join([*milestones, *(f"{f} of the budget" for f in fractions)])
    text = f"anytime readings ({spec.evaluation.num_samples or 256}-sample FID, billed to the trial) at {where}"
    scheduler = spec.scheduler
    if scheduler.type == "cost_asha":
        rungs = ", ".join(usd(d) for d in scheduler.rung_dollars(spec.trial_dollars))
        text += (f"; cost_asha on {scheduler.metric} ({scheduler.mode}) stops a trial at a rung ({rungs}) when it is "
                 f"worse than the best 1/{scheduler.reduction_factor:g} there"
                 + (f" (of its group by {', '.join(scheduler.group_by)})" if scheduler.group_by else "")
                 + f" by more than {scheduler.noise_k:g} x "
                 "the combined std: the total above is without any stop (an upper bound)")
    return text


def evaluation_protocol_note(spec: SweepSpec) -> str | None:
    """Names the deviation when the spec samples with other than the official 30 steps / guidance 5."""
    from microdit.evaluate.pipeline import EvaluationConfig

    evaluation = EvaluationConfig(**spec.evaluation.overrides())
    deviation = deviation_from_official(evaluation.steps, evaluation.guidance)
    return f"trials are evaluated with {deviation}: compare their FIDs only with FIDs of the same protocol" \
        if deviation else None
