"""The sweep spec's trial-shaping sections: the scheduler (``none`` / ``asha`` / ``cost_asha``), the
evaluation protocol with its anytime milestones, and the paper's closing fine-tune. Validated with
errors naming the key (``StrictModel``); ``config.sweep.SweepSpec`` holds them."""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt, model_validator

from microdit.config.base import StrictModel, need

SchedulerType = Literal["none", "asha", "cost_asha"]
Mode = Literal["min", "max"]
SCHEDULERS: tuple[str, ...] = get_args(SchedulerType)


class Scheduler(StrictModel):
    """Trial scheduler. ``asha``: Tune's ASHA on an intermediate training metric (e.g. loss), per
    iteration. ``cost_asha``: successive halving over dollars on the milestone FID, aware of its noise
    (``microdit.sweep.halving``): every trial is evaluated when its spend passes each rung
    (``grace_dollars`` x ``reduction_factor``^k below the trial budget; ``rungs`` of them with an image
    budget), and stopped there only when its reading is worse than the rung's cut (the worst of the best
    1/``reduction_factor`` readings) by more than ``noise_k`` x the two readings' combined std.
    ``brackets`` > 1: Hyperband's brackets, bracket s starting at ``grace_dollars`` x factor^s.
    ``metric`` defaults to the first objective: rungs sit at equal dollars, so with objectives
    [fid, cost] trials are pruned on FID at equal cost. ``group_by`` (swept keys): a trial is compared
    only with trials that share their values (e.g. the masking strategy, whose readings before the
    unmasked fine-tune are not comparable across strategies)."""

    type: SchedulerType = "none"
    metric: str | None = None
    mode: Mode | None = None  # default: the objective's mode (cost_asha), min (asha)
    grace_period: PositiveInt = 1  # asha: iterations
    reduction_factor: Annotated[float, Field(gt=1)] = 2.0
    max_t: PositiveInt = 10_000  # asha: iterations
    grace_dollars: PositiveFloat | None = None  # cost_asha: the first rung
    rungs: PositiveInt | None = None  # cost_asha: how many (needed with an image trial budget)
    brackets: PositiveInt = 1  # cost_asha
    noise_k: NonNegativeFloat = 2.0  # cost_asha: 0 = plain ASHA on the readings
    group_by: list[str] = Field(default_factory=list)  # cost_asha: swept keys; compare only within their values

    @model_validator(mode="after")
    def _needs(self) -> Scheduler:
        need(self.type != "asha" or bool(self.metric), "metric", self.metric,
             "asha needs metric (an intermediate metric, e.g. loss) and mode min|max")
        need(self.type != "cost_asha" or self.grace_dollars is not None, "grace_dollars", None,
             "cost_asha needs grace_dollars: the spend of its first rung (e.g. a tenth of the trial budget)")
        return self

    def rung_dollars(self, trial_dollars: float | None) -> list[float]:
        """Bracket 0's rungs (later brackets use the tail): grace x factor^k, below ``trial_dollars``."""
        if self.type != "cost_asha":
            return []
        rungs, k = [], 0
        while self.rungs is None or k < self.rungs:
            dollars = float(self.grace_dollars) * self.reduction_factor ** k
            if trial_dollars is not None and dollars >= trial_dollars * (1 - 1e-9):
                break
            rungs.append(dollars)
            k += 1
        return rungs


class Evaluation(StrictModel):
    """The trials' evaluation protocol (``microdit.evaluate.pipeline.EvaluationConfig`` overrides), used
    after training and at milestones: ``at_dollars`` (spend) and ``at_fraction`` (of the trial budget)
    add anytime readings, billed to the trial, besides a ``cost_asha`` scheduler's rungs."""

    reference: str | None = None
    num_samples: PositiveInt | None = None
    steps: PositiveInt | None = None
    guidance: NonNegativeFloat | None = None
    seed: int | None = None
    clip_model: str | None = None
    at_dollars: list[PositiveFloat] = Field(default_factory=list)
    at_fraction: list[Annotated[float, Field(gt=0.0, lt=1.0)]] = Field(default_factory=list)

    def overrides(self) -> dict[str, Any]:
        """The protocol settings the spec gives (``{}`` = evaluate only if an objective needs it)."""
        return {k: v for k, v in self if v is not None and k not in ("at_dollars", "at_fraction")}


class Finetune(StrictModel):
    """The paper's protocol: every trial ends with the same unmasked fine-tune, inside its budget.

    Its length is in the trial budget's unit (dollars or images); the trial's last swept phase is
    cut to the budget minus the fine-tune. The fine-tune phase copies the last phase, then sets
    mask_ratio 0, a constant LR without warmup and these fields."""

    dollars: PositiveFloat | None = None
    images: PositiveInt | None = None
    resolution: PositiveInt | None = None
    lr: PositiveFloat | None = None
    micro_batch: PositiveInt | None = None  # unmasked steps hold ~4x the activations of 75%-masked ones
    mask_ratio: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    ema_half_life_images: PositiveFloat | None = None
    ema_start_images: Annotated[int, Field(ge=0)] = 0

    @model_validator(mode="after")
    def _length(self) -> Finetune:
        need((self.dollars is None) != (self.images is None), "dollars/images", [self.dollars, self.images],
             "give exactly one fine-tune length, in the trial budget's unit")
        return self

    def apply(self, phases: list[dict[str, Any]], budget_unit: str, budget: float) -> list[dict[str, Any]]:
        """The trial's phases: the last one cut to ``budget`` minus the fine-tune, then the fine-tune."""
        length = getattr(self, budget_unit)
        need(length is not None, budget_unit, None,
             f"the fine-tune must be given in the trial budget's unit ({budget_unit}) so both fit the budget")
        need(length < budget, budget_unit, length, f"must be below the trial budget ({budget})")
        lengths = ("steps", "images", "dollars")
        swept = {k: v for k, v in phases[-1].items() if k not in lengths}
        remaining = budget - length
        swept[budget_unit] = remaining if budget_unit == "dollars" else int(remaining)
        finetune = {**swept, "name": "finetune", "mask_ratio": self.mask_ratio, "lr_schedule": "constant",
                    "warmup_steps": 0, "optimizer_state": "keep", budget_unit: length}
        finetune.pop("masking", None)  # the model's own strategy (at ratio 0: every patch is seen)
        for key in ("resolution", "lr", "micro_batch", "ema_half_life_images"):
            if getattr(self, key) is not None:
                finetune[key] = getattr(self, key)
        finetune["ema_start_images"] = self.ema_start_images
        if self.ema_half_life_images is None:
            finetune.pop("ema_half_life_images", None)
        return [*phases[:-1], swept, finetune]
