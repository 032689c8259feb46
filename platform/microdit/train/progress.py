"""The training progress view of ``microdit train``: step/total · phase · loss · $ · ETA.

Ray Train hands the workers' reports to callbacks on its controller actor (on the driver's node,
but not the driver process, which waits in ``fit()``). So ``ReportForwarder`` passes rank 0's
latest metrics to a small actor (``LatestReport``) without waiting, and a driver thread polls it
into a ``console.Progress``: a bar on a terminal, a line every 30 s in a log. The loop reports at
log steps, at most every 2 s (``train.loop.REPORT_EVERY_S``), and at checkpoints.
"""

from __future__ import annotations

import logging
import math
import sys
import threading

import ray
from ray.train import UserCallback

from microdit.config.recipe import RecipeConfig
from microdit.console import Progress

log = logging.getLogger(__name__)


@ray.remote(num_cpus=0)
class LatestReport:
    """Rank 0's last report: a progress view needs only the newest one."""

    def __init__(self) -> None:
        self.count, self.metrics = 0, {}

    def set(self, metrics: dict) -> None:
        self.count, self.metrics = self.count + 1, metrics

    def get(self) -> tuple[int, dict]:
        return self.count, self.metrics


class ReportForwarder(UserCallback):
    """On the Train controller: forward each report of rank 0, fire and forget (never blocks training)."""

    def __init__(self, box) -> None:
        self.box = box

    def after_report(self, run_context, metrics, checkpoint) -> None:
        if metrics:
            self.box.set.remote(dict(metrics[0]))


def total_steps(recipe: RecipeConfig) -> int | None:
    """The run's optimizer steps: every phase's, cut where ``max_images`` is reached; None when a
    phase is measured in dollars (its steps are known only at run time)."""
    steps = images = 0
    for phase in recipe.phases:
        length = phase.total_steps()
        if length is None:
            return None
        if recipe.max_images is not None and images + length * phase.batch_size >= recipe.max_images:
            return steps + max(0, math.ceil((recipe.max_images - images) / phase.batch_size))
        steps, images = steps + length, images + length * phase.batch_size
    return steps


class TrainProgress:
    """Start with ``callback()`` in the trainer's ``RunConfig``; ``close()`` after ``fit()``."""

    def __init__(self, recipe: RecipeConfig, name: str, stream=None) -> None:
        stream = stream or sys.stdout
        self.progress = Progress(f"train {name}", total_steps(recipe), "step", initial=None, stream=stream)
        self.budget = recipe.max_dollars
        self.box = LatestReport.remote()
        self.seen = 0
        self.loss: float | None = None
        self.stop = threading.Event()
        self.poll_s = 1.0 if stream.isatty() else 5.0
        self.thread = threading.Thread(target=self._run, name="microdit-train-progress", daemon=True)
        self.thread.start()

    def callback(self) -> ReportForwarder:
        return ReportForwarder(self.box)

    def show(self, metrics: dict) -> None:
        """One report: the step, its phase, the loss (kept across checkpoint reports, which carry none), $."""
        if "step" not in metrics:
            return
        self.loss = float(metrics["loss"]) if "loss" in metrics else self.loss
        fields = {"phase": int(metrics.get("phase", 0))} if "phase" in metrics else {}
        if self.loss is not None:
            fields["loss"] = f"{self.loss:.4f}"
        spent = float(metrics.get("cost_usd", 0.0))
        fields["$"] = f"{spent:.4g}" + (f" of ${self.budget:.4g}" if self.budget else "")
        self.progress.update(int(metrics["step"]), **fields)

    def _poll(self) -> None:
        count, metrics = ray.get(self.box.get.remote())
        if count != self.seen:
            self.seen = count
            self.show(metrics)

    def _run(self) -> None:
        try:
            while not self.stop.wait(self.poll_s):
                self._poll()
        except Exception as err:  # a progress view must never end a training run
            log.debug("train progress stopped: %s", err)

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        try:
            self._poll()  # the final report
        except Exception as err:
            log.debug("train progress: last poll failed: %s", err)
        self.progress.close()
        ray.kill(self.box)
