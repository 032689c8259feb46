"""``cost_asha``: successive halving over dollars on the milestone FID, not fooled by its noise.

Tune's ASHA compares the latest value of a metric at training iterations; here the rungs are dollar
amounts (``grace_dollars`` x ``reduction_factor``^k) and the metric is a reading with a known noise
(an FID with its half-sampling std, ``microdit.evaluate.uncertainty``). Each trial is evaluated when
its spend passes a rung (``train.milestones``; the result carries ``milestone_target_usd``), and is
decided on arrival, as in ASHA: with n readings at that rung so far (its own included), the *cut* is
the ceil(n / factor)-th best one, the worst reading still promoted. The trial is stopped only when it
is worse than the cut beyond the noise of both,

    sign * (x - x_cut) > noise_k * sqrt(s^2 + s_cut^2)        (sign +1 to minimise, -1 to maximise)

so one noisy bad reading within its interval of the cut does not stop a good trial; ``noise_k`` 0 is
plain ASHA. The rule is the report's "within noise" (``pareto.within_noise``) at ``noise_k`` 2.

Groups (``group_by``): trials are compared at a rung only with those sharing the values of the named
swept keys, e.g. the masking strategy: a masked model read before its unmasked fine-tune is not held
against an unmasked one, only against its own kind.

Brackets (Hyperband): trial i joins bracket i mod ``brackets``; bracket s only has the rungs from
grace x factor^s on (every trial is evaluated at all of bracket 0's rungs; the others ignore the
lower ones). Rungs sit at equal dollars, so with objectives [fid, cost] a rung compares FID at equal
cost: that is the scalarisation multi-objective sweeps prune on.

A stop is recorded on the trial's MLflow run (``microdit.stop_reason``, ``stopped_at_usd``) with what
it cost: its spend at the reading plus the seconds until Tune stops it, at its devices' price
(``final/cost_usd``, so the sweep total counts it). Trials are matched by the ``tune.trial_id`` tag.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass

from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from microdit.train.milestones import REPORTED_AT, TARGET_USD, USD_PER_S

log = logging.getLogger(__name__)
STOP_REASON_TAG = "microdit.stop_reason"


@dataclass(frozen=True)
class Reading:
    value: float
    std: float = 0.0


@dataclass(frozen=True)
class Decision:
    """One rung decision: the trial's reading against the cut, and whether it goes on."""

    trial_id: str
    bracket: int
    rung: int  # index into the bracket's rungs
    rung_usd: float
    value: float
    std: float
    cut: float
    cut_std: float
    readings: int  # at this rung so far, this one included
    stop: bool

    def reason(self, metric: str, noise_k: float, factor: float) -> str:
        verdict = "worse than" if self.stop else "within noise of or better than"
        return (f"{metric} {self.value:.4g} ± {self.std:.2g} at rung {self.rung} (${self.rung_usd:.4g}) {verdict} "
                f"the cut {self.cut:.4g} ± {self.cut_std:.2g} (the worst of the best 1/{factor:g} of {self.readings} "
                f"readings; stop only beyond {noise_k:g} x combined std)")


def rung_cut(readings: list[Reading], factor: float, mode: str) -> Reading:
    """The worst reading still promoted: the ceil(n / factor)-th best of the n readings at a rung."""
    ordered = sorted(readings, key=lambda r: r.value if mode == "min" else -r.value)
    return ordered[max(1, math.ceil(len(ordered) / factor)) - 1]


def worse_beyond_noise(reading: Reading, cut: Reading, mode: str, noise_k: float) -> bool:
    """Whether ``reading`` is worse than ``cut`` by more than ``noise_k`` x their combined std."""
    sign = 1.0 if mode == "min" else -1.0
    return sign * (reading.value - cut.value) > noise_k * math.hypot(reading.std, cut.std)


class CostHalving(FIFOScheduler):
    """The ``cost_asha`` scheduler (module docstring). ``rungs``: bracket 0's rung dollars."""

    def __init__(self, metric: str, mode: str, rungs: list[float], reduction_factor: float = 2.0,
                 brackets: int = 1, noise_k: float = 2.0, tracking: tuple[str, str] | None = None,
                 group_params: list[str] | None = None):
        super().__init__()
        if mode not in ("min", "max"):
            raise ValueError(f"mode: expected min or max, got {mode!r}")
        self._metric, self._mode, self.rungs = metric, mode, [float(r) for r in rungs]  # Tune's metric/mode
        self.factor, self.brackets, self.noise_k = float(reduction_factor), int(brackets), float(noise_k)
        self.tracking = tracking  # (MLflow uri, sweep parent run id): where stops are recorded
        self.group_params = list(group_params or [])  # Tune config keys whose values make a group
        self.bracket_of: dict[str, int] = {}
        self.recorded: dict[tuple, dict[str, Reading]] = {}  # (bracket, group, rung) -> trial -> reading
        self.decisions: list[Decision] = []

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return True  # its own metric and mode (the searcher's may be several objectives)

    def on_trial_add(self, tune_controller, trial) -> None:
        self.bracket_of.setdefault(trial.trial_id, len(self.bracket_of) % self.brackets)

    def bracket_rungs(self, bracket: int) -> list[float]:
        return self.rungs[bracket:]

    def decide(self, trial_id: str, rung_usd: float, reading: Reading, group: tuple = ()) -> Decision | None:
        """Record the reading at its rung and decide; None when ``rung_usd`` is not one of the trial's rungs."""
        bracket = self.bracket_of.setdefault(trial_id, len(self.bracket_of) % self.brackets)
        rungs = self.bracket_rungs(bracket)
        rung = next((i for i, r in enumerate(rungs) if math.isclose(r, rung_usd, rel_tol=1e-6)), None)
        if rung is None:
            return None
        at_rung = self.recorded.setdefault((bracket, group, rung), {})
        at_rung[trial_id] = reading
        cut = rung_cut(list(at_rung.values()), self.factor, self._mode)
        decision = Decision(trial_id, bracket, rung, rungs[rung], reading.value, reading.std, cut.value, cut.std,
                            len(at_rung), worse_beyond_noise(reading, cut, self._mode, self.noise_k))
        self.decisions.append(decision)
        return decision

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        target, value = result.get(TARGET_USD), result.get(self.metric)
        if target is None or not isinstance(value, (int, float)) or not math.isfinite(value):
            return TrialScheduler.CONTINUE
        std = result.get(f"{self.metric}_std")
        std = float(std) if isinstance(std, (int, float)) and math.isfinite(std) and std > 0 else 0.0
        group = tuple(str(trial.config.get(key)) for key in self.group_params)
        decision = self.decide(trial.trial_id, float(target), Reading(float(value), std), group)
        if decision is None:
            return TrialScheduler.CONTINUE
        reason = decision.reason(self.metric, self.noise_k, self.factor)
        log.debug("trial %s: %s -> %s", trial.trial_id, reason, "stop" if decision.stop else "continue")
        if decision.stop:
            self.record_stop(trial.trial_id, result, reason)
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def record_stop(self, trial_id: str, result: dict, reason: str) -> None:
        """Bill the stopped trial on its MLflow run: its spend at the reading plus the seconds since it
        reported (it trains on until Tune stops it, right after this), and say why it stopped."""
        if self.tracking is None:
            return
        from microdit.sweep.accounting import bill_stopped_trial

        lag = max(0.0, time.time() - float(result.get(REPORTED_AT, time.time())))
        bill_stopped_trial(*self.tracking, trial_id, spent_usd=float(result.get("cost_usd", 0.0)),
                           lag_usd=lag * float(result.get(USD_PER_S, 0.0)),
                           stopped_at_usd=float(result[TARGET_USD]), reason=reason)

    def debug_string(self) -> str:
        stopped = sum(d.stop for d in self.decisions)
        return f"CostHalving: {len(self.decisions)} rung decisions, {stopped} stops"

    def decision_log(self) -> list[dict]:
        return [asdict(d) for d in self.decisions]
