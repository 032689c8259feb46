"""``seeds: auto``: spend replicates only where they can change the answer.

A grid sweep first trains every configuration once. When that round is in, each configuration's
quality (the first objective: mean over its seeds, ± its std: the reading's half-sampling std with
one seed, the std over seeds with more) is compared with the best one's by the report's rule
(``pareto.within_noise``: |x - x_best| <= 2 sqrt(s^2 + s_best^2)); only the best and those within noise
of it get another seed, round after round, until none is within noise, ``max_seeds`` is reached, or the
sweep's ``max_trials`` / dollar budget (``BudgetGuard``) ends it. A configuration the scheduler stopped
or whose trial failed gets no more seeds.

Why each configuration got its seeds is written to the sweep's MLflow run (``replication.json``: its
trials, seeds and the reason), and the report shows it beside the configuration.
"""

from __future__ import annotations

import logging
import pickle
import statistics
from typing import Any

from ray.tune.search import Searcher

from microdit.sweep.pareto import within_noise

log = logging.getLogger(__name__)
REPLICATION_ARTIFACT = "replication.json"


def quality(readings: list[tuple[float, float]]) -> tuple[float, float]:
    """(mean, std) of a configuration's finished seeds: one seed keeps its reading's own std."""
    values = [v for v, _ in readings]
    if len(values) == 1:
        return values[0], readings[0][1]
    return statistics.fmean(values), statistics.stdev(values)


class AdaptiveSeeds(Searcher):
    """Suggests every grid configuration once, then further seeds round by round (module docstring).

    ``configs``: the Tune config of each configuration (without the replicate key); ``replicate_key``
    is added to each suggestion."""

    def __init__(self, configs: list[dict[str, Any]], metric: str, mode: str, *, max_seeds: int, max_trials: int,
                 replicate_key: str, search_metric=None, search_mode=None, tracking: tuple[str, str] | None = None):
        super().__init__(metric=search_metric, mode=search_mode)
        self.configs, self.quality_metric, self.quality_mode = configs, metric, mode
        self.max_seeds, self.max_trials, self.replicate_key = max_seeds, max_trials, replicate_key
        self.tracking = tracking
        self.queue: list[tuple[int, int]] = [(i, 0) for i in range(len(configs))]  # (configuration, replicate)
        self.assigned: dict[str, tuple[int, int]] = {}
        self.running: set[str] = set()
        self.readings: dict[int, list[tuple[float, float]]] = {i: [] for i in range(len(configs))}
        self.trials: dict[int, list[str]] = {i: [] for i in range(len(configs))}
        self.closed: dict[int, str] = {}  # configuration -> why it gets no more seeds
        self.why: dict[int, str] = {i: "one seed" for i in range(len(configs))}
        self.requested: dict[int, int] = {i: 1 for i in range(len(configs))}  # seeds asked for so far

    def suggest(self, trial_id: str):
        if trial_id in self.assigned:
            return self._config(*self.assigned[trial_id])
        if len(self.assigned) >= self.max_trials:
            return Searcher.FINISHED
        if not self.queue:
            return None if self.running else Searcher.FINISHED  # a running round's results decide the next seeds
        index, replicate = self.queue.pop(0)
        self.assigned[trial_id] = (index, replicate)
        self.running.add(trial_id)
        self.trials[index].append(trial_id)
        return self._config(index, replicate)

    def _config(self, index: int, replicate: int) -> dict[str, Any]:
        return {**self.configs[index], self.replicate_key: replicate}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in self.assigned:
            return
        self.running.discard(trial_id)
        index, _ = self.assigned[trial_id]
        value = (result or {}).get(self.quality_metric)
        if error or not isinstance(value, (int, float)):
            self.closed[index] = "its trial failed" if error else "stopped early by the scheduler"
        else:
            std = (result or {}).get(f"{self.quality_metric}_std")
            self.readings[index].append((float(value), float(std) if isinstance(std, (int, float)) else 0.0))
        if not self.running and not self.queue:  # the round is in: decide the next one now
            self.queue = self.next_round()

    def next_round(self) -> list[tuple[int, int]]:
        """The next seed of every open configuration within noise of the best (and the best's own)."""
        open_ = [i for i in range(len(self.configs)) if self.readings[i] and i not in self.closed]
        if not open_:
            return []
        stats = [quality(self.readings[i]) for i in open_]
        flags = within_noise([m for m, _ in stats], [s for _, s in stats], self.quality_mode)
        best = open_[flags.index("best")]
        follow = []
        for index, flag, (mean, std) in zip(open_, flags, stats):
            seeds = len(self.readings[index])
            if flag is False:
                b_mean, b_std = quality(self.readings[best])
                self.closed[index] = (f"worse than the best ({b_mean:.4g} ± {b_std:.2g}) beyond noise after {seeds} "
                                      f"seed{'s' if seeds > 1 else ''} ({mean:.4g} ± {std:.2g})")
            elif seeds >= self.max_seeds:
                self.closed[index] = f"max_seeds ({self.max_seeds}) reached"
            else:
                self.why[index] = ("the best" if flag == "best" else "within noise of the best") + \
                    f" after {seeds} seed{'s' if seeds > 1 else ''}: seed {seeds + 1} added"
                self.requested[index] = seeds + 1
                follow.append((index, seeds))
        self.record()
        return follow

    def explain(self) -> list[dict[str, Any]]:
        """Per configuration: its trials, the seeds asked for, and why it got no more (or the last one)."""
        return [{"trials": list(self.trials[i]), "seeds_requested": self.requested[i],
                 "why": self.closed.get(i, self.why[i])} for i in range(len(self.configs)) if self.trials[i]]

    def record(self) -> None:
        """Write ``explain()`` to the sweep's MLflow run (when tracked)."""
        if self.tracking is None:
            return
        from microdit.tracking import client

        uri, parent_run_id = self.tracking
        try:
            client(uri).log_dict(parent_run_id, self.explain(), REPLICATION_ARTIFACT)
        except Exception as err:  # bookkeeping: never end the sweep over it
            log.warning("could not record the replication decisions: %s", err)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump({k: getattr(self, k) for k in STATE}, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            for key, value in pickle.load(f).items():
                setattr(self, key, value)


STATE = ("queue", "assigned", "running", "readings", "trials", "closed", "why", "requested")
