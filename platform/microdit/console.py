"""What the user sees: logging set-up, Ray's internals kept quiet, trial progress lines, where results are.

The CLI calls ``configure(verbosity)`` once (``-q`` = -1, default 0, ``-v`` = 1, ``-vv`` = 2). At the
default, microdit's own ``logging`` lines show (INFO, one line each, on stderr) while Ray, Ray
Train/Tune/Data, MLflow and Optuna show warnings and errors only: ``ray_init_kwargs`` applies the
same level to every Ray worker (``ray.LoggingConfig``) and keeps workers' output out of the console
(``log_to_driver``: a worker's traceback or Ray's notice of a dead worker is one ``TrialLines`` line
here, with the file that holds the details), Tune's status tables and trial-config dumps are off
(``tune_verbosity``) and progress bars draw only on a terminal. The full logs stay in Ray's session
directory (a private local instance's: ``/tmp/microdit-ray-*/ray/session_latest/logs``, logged when
it starts). ``TrialLines`` prints one line per trial
start, a throttled progress line while it runs and one when it ends; ``where_to_look`` is the end of
a sweep: the MLflow UI command for this store, the Pareto plot, the best trial's weights and the
next commands.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

VERBOSITY = 0
NOISY = ("ray", "mlflow", "optuna", "alembic", "urllib3", "filelock", "matplotlib", "PIL")
PROGRESS_EVERY_S = 30.0  # at most one progress line this often (per view; per sweep for trial lines)
TUNE_ERROR_LOGGERS = ("ray.tune.execution.tune_controller", "ray.tune.tune")


VERBOSITY_ENV = "MICRODIT_VERBOSITY"  # shipped to workers (``cluster.SHIPPED_ENV``)


def configure(verbosity: int = 0) -> None:
    """Logging for a CLI process (see module docstring)."""
    import os

    global VERBOSITY
    VERBOSITY = verbosity
    os.environ[VERBOSITY_ENV] = str(verbosity)
    if verbosity < 1:  # MLflow sets its own logger up when imported (later): tell it by variable
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # "Downloading artifacts" bars
    level = logging.WARNING if verbosity < 0 else logging.INFO if verbosity < 2 else logging.DEBUG
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)  # a no-op if the host set one up
    logging.getLogger("microdit").setLevel(level)
    for name in NOISY:
        logging.getLogger(name).setLevel(logging.INFO if verbosity >= 1 else logging.WARNING)
    for name in TUNE_ERROR_LOGGERS:  # a failed trial's traceback, again: ``TrialLines`` names its error
        logging.getLogger(name).setLevel(logging.INFO if verbosity >= 1 else logging.CRITICAL)


def ray_init_kwargs() -> dict[str, Any]:
    """``ray.init`` arguments: the driver's and every worker's Ray log level, and whether workers'
    output is echoed here: not below ``-v``, where a worker's traceback, Ray's "worker died" notices
    and Train's cleaner warnings stay in the Ray logs (``connect_ray`` says where they are) and the
    console keeps one line per event (``TrialLines``: a failed or rerun trial, with its error file)."""
    import ray

    level = "INFO" if VERBOSITY >= 1 else "WARNING"
    return {"logging_level": getattr(logging, level), "logging_config": ray.LoggingConfig(log_level=level),
            "log_to_driver": VERBOSITY >= 1}


def train_logging_config():
    """``ray.train.RunConfig(logging_config=…)``: Ray Train's own worker/controller log level."""
    import ray

    return ray.LoggingConfig(log_level="INFO" if VERBOSITY >= 1 else "WARNING")


def configure_worker() -> None:
    """In a Ray worker: microdit's per-step details (evaluations, cache hits) only with ``-v``."""
    import os

    verbosity = int(os.environ.get(VERBOSITY_ENV, "0"))
    level = logging.INFO if verbosity >= 1 else logging.WARNING
    logging.getLogger("microdit").setLevel(level)
    try:  # Ray 2.60 logs every report ("Reporting training result N: …") on a logger named after the
        # file, which escapes Train's own level filter (it matches "ray.train*" names only)
        from ray.train.v2._internal.execution import context

        logging.getLogger(context.__file__).setLevel(level)
    except ImportError:
        pass


def tune_verbosity() -> int:
    """Tune's own console output: none by default (``TrialLines`` reports), tables with ``-vv``.
    (Tune's newer reporter prints its experiment header even at verbose 0: the classic one is used.)"""
    import os

    if VERBOSITY < 2:
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    return 2 if VERBOSITY >= 2 else 0


def quiet_ray_data() -> None:
    """No Ray Data progress bars or execution banners below ``-v``."""
    if VERBOSITY >= 1:
        return
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def _say(line: str) -> None:
    print(line, flush=True)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Progress:
    """A progress bar (tqdm) on a terminal; on anything else (a log file, CI) one line at most every
    ``every_s`` seconds and a summary line at the end, so logs never fill up with redrawn bars.

    ``update(done, **fields)`` sets the absolute position (``done`` of ``total`` ``unit``) and the
    fields shown beside it (``phase=0, loss="0.41"``); the rate is ``unit``/s since ``initial``, or
    with ``initial=None`` since the first update (a resumed run starts counting where it resumed).
    Silent when ``enabled`` is false or under ``-q``."""

    def __init__(self, label: str, total: float | None = None, unit: str = "it", *, enabled: bool = True,
                 initial: float | None = 0, stream=None, every_s: float = PROGRESS_EVERY_S, clock=time.monotonic):
        self.label, self.total, self.unit, self.every_s, self.clock = label, total, unit, every_s, clock
        self.stream = stream or sys.stdout
        self.enabled = enabled and VERBOSITY >= 0
        self.fields: dict[str, Any] = {}
        self.bar = None
        self.initial = self.done = 0.0
        self.started = self.last_line = clock()
        if initial is not None:
            self._start(initial)
        self.waiting = initial is None

    def _start(self, initial: float) -> None:
        self.initial = self.done = initial
        self.started = self.last_line = self.clock()
        if self.enabled and self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, initial=initial, desc=self.label, unit=self.unit, file=self.stream,
                            dynamic_ncols=True)

    def update(self, done: float, **fields: Any) -> None:
        if not self.enabled:
            return
        if self.waiting:
            self.waiting = False
            self._start(done)
        self.fields = fields
        if self.bar is not None:
            self.bar.set_postfix_str(_fields(fields), refresh=False)
            self.bar.update(done - self.done)
            self.done = done
            return
        self.done = done
        now = self.clock()
        if now - self.last_line >= self.every_s:
            self.last_line = now
            self._say(self.line(now))

    def line(self, now: float) -> str:
        """``label: done/total unit (pct) · fields · rate unit/s · ETA``."""
        elapsed = max(now - self.started, 1e-9)
        rate = (self.done - self.initial) / elapsed
        parts = [f"{self.label}: {_count(self.done)}" + (f"/{_count(self.total)} {self.unit} "
                                                         f"({100 * self.done / self.total:.0f}%)"
                                                         if self.total else f" {self.unit}")]
        if self.fields:
            parts.append(_fields(self.fields))
        parts.append(f"{rate:.3g} {self.unit}/s")
        if self.total and rate > 0 and self.done < self.total:
            parts.append(f"ETA {_duration((self.total - self.done) / rate)}")
        return " · ".join(parts)

    def close(self) -> None:
        """The bar's last state, or (off a terminal) one summary line."""
        if not self.enabled or self.waiting:
            return
        if self.bar is not None:
            self.bar.close()
            return
        now = self.clock()
        self._say(f"{self.line(now)} · {_duration(now - self.started)}")

    def _say(self, line: str) -> None:
        print(line, file=self.stream, flush=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _count(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() or value >= 100 else f"{value:.3g}"


def _fields(fields: dict[str, Any]) -> str:
    return " · ".join(f"{key} {value}" if key != "$" else f"${value}" for key, value in fields.items())


def make_trial_lines(total: int, params: Any, images: int | None, dollars: float | None):
    """A Tune callback (class built lazily: importing Tune is slow) reporting each trial in one line."""
    from ray.tune import Callback

    class TrialLines(Callback):
        """trial k/n · its parameters; progress · phase · step · loss · $ · ETA; the result."""

        def __init__(self) -> None:
            self.number: dict[str, int] = {}
            self.started: dict[str, float] = {}
            self.last: dict[str, float] = {}

        def _tag(self, trial) -> str:
            number = self.number.setdefault(trial.trial_id, len(self.number) + 1)
            return f"trial {number}/{total} {trial.trial_id}"

        def on_trial_start(self, iteration, trials, trial, **info):
            again = trial.trial_id in self.started  # a rerun after a lost process (on_trial_recover said why)
            self.started[trial.trial_id] = self.last[trial.trial_id] = time.monotonic()
            _say(f"{self._tag(trial)} restarted" if again else f"{self._tag(trial)} started: {params(trial.config)}")

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if "milestone_usd" in result:  # an anytime reading: always worth a line
                _say(f"{self._tag(trial)} · reading at ${result['milestone_usd']:.4g}: {_quality(result)}")
                return
            now = time.monotonic()
            # k trials running: each shows progress every k x 30 s, the sweep about once per 30 s
            running = sum(1 for t in trials if t.status == "RUNNING") or 1
            if now - self.last.get(trial.trial_id, 0.0) < PROGRESS_EVERY_S * running or "step" not in result:
                return
            self.last[trial.trial_id] = now
            done = progress_fraction(result, images, dollars)
            elapsed = now - self.started.get(trial.trial_id, now)
            eta = f" · ETA {elapsed * (1 - done) / done:.0f} s" if done and 0 < done < 1 else ""
            loss = f" · loss {result['loss']:.4f}" if "loss" in result else ""
            _say(f"{self._tag(trial)} · phase {int(result.get('phase', 0))} · step {int(result['step'])}{loss}"
                 f" · ${result.get('cost_usd', 0.0):.4g}{eta}")

        def on_trial_complete(self, iteration, trials, trial, **info):
            result = trial.last_result or {}
            if "budget_done" not in result and "milestone_target_usd" in result:  # a scheduler stopped it there
                _say(f"{self._tag(trial)} stopped early at the ${result['milestone_target_usd']:.4g} rung: "
                     f"{_quality(result)} · ${result.get('cost_usd', 0.0):.4g} (the report says why)")
                return
            shown = {k: v for k, v in result.items() if k.startswith(("fid", "clip")) and not k.endswith("_ci_high")}
            values = ", ".join(f"{k} {v:.4g}" for k, v in sorted(shown.items()) if isinstance(v, float))
            _say(f"{self._tag(trial)} finished: {values or 'no quality metric'} · ${result.get('cost_usd', 0.0):.4g}")

        def on_trial_error(self, iteration, trials, trial, **info):
            _say(f"{self._tag(trial)} FAILED: {last_error_line(trial)}")

        def on_trial_recover(self, iteration, trials, trial, **info):
            _say(f"{self._tag(trial)} lost its process, rerun from its last checkpoint "
                 f"(failure {trial.run_metadata.num_failures} of at most {trial.max_failures + 1}): "
                 f"{last_error_line(trial)}")

    return TrialLines()


def _quality(result: dict) -> str:
    """'fid_128 231.4 ± 3.1, clip_score 0.21' from a result's quality metrics."""
    names = sorted(k for k in result if k.startswith("fid_") and not k.endswith(("_std", "_ci_low", "_ci_high")))
    parts = [f"{k} {result[k]:.4g}" + (f" ± {result[k + '_std']:.2g}" if f"{k}_std" in result else "") for k in names]
    if "clip_score" in result:
        parts.append(f"clip_score {result['clip_score']:.4g}")
    return ", ".join(parts) or "no quality metric"


def last_error_line(trial) -> str:
    """The exception line of a failed trial (``ExcType: message``), from its error file."""
    import os

    path = getattr(trial, "error_file", None)
    try:
        lines = [line for line in open(path, encoding="utf-8").read().splitlines() if line.strip()] if path else []
    except OSError:
        lines = []
    errors = [line.strip() for line in lines if not line.startswith((" ", "Traceback", "File "))]
    where = f" (details: {path})" if path and os.path.exists(path) else ""
    return (errors[-1][:300] if errors else "see the Tune results") + where


def progress_fraction(result: dict, images: int | None, dollars: float | None) -> float | None:
    """How far a trial is: images seen of its image budget, or dollars spent of its dollar budget."""
    fractions = []
    if images:
        fractions.append(float(result.get("images_seen", 0.0)) / images)
    if dollars:
        fractions.append(float(result.get("cost_usd", 0.0)) / dollars)
    return min(1.0, max(fractions)) if fractions else None


def mlflow_ui_command(uri: str) -> str:
    """How to look at this store: ``mlflow ui`` for a local file, the server's address otherwise."""
    if uri.startswith(("sqlite:", "file:")) or "://" not in uri:
        return f"mlflow ui --backend-store-uri {uri}"
    return f"open {uri} in a browser"


def where_to_look(uri: str, parent_run_id: str, sweep_name: str, best_trial: str | None) -> list[str]:
    """The closing lines of a sweep: UI command, plot, the best trial's weights, next commands."""
    from microdit.tracking import RUN_NAME_TAG, client

    mlflow_client = client(uri)
    parent = mlflow_client.get_run(parent_run_id)
    lines = ["", "results:", f"  MLflow    {mlflow_ui_command(uri)}   (sweep run {parent_run_id})",
             f"  plot      {parent.info.artifact_uri.rstrip('/')}/pareto.png"]
    if best_trial:
        runs = mlflow_client.search_runs([parent.info.experiment_id], max_results=1,
                                         filter_string=f"tags.`{RUN_NAME_TAG}` = '{best_trial}'")
        weights = runs[0].data.tags.get("microdit.weights") if runs else None
        lines.append(f"  best      {best_trial}: weights {weights or 'not saved'}")
    lines += ["next:", f"  microdit compare {sweep_name}"]
    if best_trial:
        lines.append(f"  microdit evaluate --checkpoint {best_trial} --num-samples 1000")
    return lines
