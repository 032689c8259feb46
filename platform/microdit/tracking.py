"""MLflow conventions in one place: tracking URI, run identity, parent/child runs, async logging.

One MLflow run per training run, found again by the tag ``microdit.run_name`` (the Ray Train run
name), so a relaunched or retried run continues the same MLflow record. Sweeps create a parent
run and one child per trial (tag ``mlflow.parentRunId``). Rank 0 logs through ``AsyncLogger``, a
background thread, so a slow SQLite write never stalls a training step.
"""

from __future__ import annotations

import os
import queue
import re
import threading
import time
from typing import Any

RUN_NAME_TAG = "microdit.run_name"
KIND_TAG = "microdit.kind"  # train | sweep | trial | evaluate


def default_uri() -> str:
    """``sqlite:///<root>/mlflow.db`` beside the runs (``~/microdit`` unless $MICRODIT_ROOT is a local
    path): one machine only; clusters use an ``mlflow server`` (``cluster.check_tracking_fits_cluster``)."""
    from microdit.storage import local_root

    return "sqlite:///" + os.path.join(local_root(), "mlflow.db")


def tracking_uri(configured: str | None = None) -> str:
    """Config value, else $MLFLOW_TRACKING_URI, else ``default_uri()`` (never the working directory,
    which ``ray job submit`` replaces with a temporary copy)."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI") or default_uri()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + os.path.abspath(uri[len("sqlite:///"):])  # stable across Ray workers' cwd
    if uri.startswith("sqlite:////"):
        os.makedirs(os.path.dirname(uri[len("sqlite:///"):]), exist_ok=True)
    return uri


_CREATED: set[str] = set()  # SQLite stores this process has made sure exist


def client(uri: str):
    """An ``MlflowClient`` for ``uri``; a SQLite store is first created once under a lock (below)."""
    from mlflow.tracking import MlflowClient

    if uri.startswith("sqlite:///") and uri not in _CREATED:
        create_sqlite_store(uri)
        _CREATED.add(uri)
    return MlflowClient(tracking_uri=uri)


def create_sqlite_store(uri: str) -> None:
    """Create (or migrate) the SQLite store at ``uri`` while holding ``<file>.lock``: two commands
    opening a fresh store at once both run MLflow's schema migrations, and the second dies with
    alembic's "Online migration expected to match one row ... 0 found" (measured). Once created,
    concurrent readers and writers are SQLite's business (its busy timeout)."""
    from filelock import FileLock
    from mlflow.tracking import MlflowClient

    path = uri[len("sqlite:///"):]
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with FileLock(path + ".lock", timeout=600):
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)  # opening the store creates it


# MLflow 3's UI opens an experiment on its GenAI overview unless it is tagged as model training.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def experiment_id(uri: str, name: str) -> str:
    mlflow_client = client(uri)
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is not None:
        for key, value in EXPERIMENT_KIND.items():
            if experiment.tags.get(key) != value:  # made by an older version or by hand
                mlflow_client.set_experiment_tag(experiment.experiment_id, key, value)
        return experiment.experiment_id
    try:
        return mlflow_client.create_experiment(name, artifact_location=_artifact_root(uri, name), tags=EXPERIMENT_KIND)
    except Exception:  # created concurrently by another process
        return mlflow_client.get_experiment_by_name(name).experiment_id


def _artifact_root(uri: str, experiment: str) -> str | None:
    """Artifacts beside a SQLite store (``<db folder>/mlartifacts/<experiment>``), not in whatever the
    current directory is; other stores keep MLflow's default."""
    if not uri.startswith("sqlite:///"):
        return None
    folder = os.path.dirname(uri[len("sqlite:///"):]) or "."
    return "file://" + os.path.join(os.path.abspath(folder), "mlartifacts", experiment)


def find_run(uri: str, experiment: str, run_name: str) -> str | None:
    """The id of the run tagged with this Ray run name, if one exists."""
    mlflow_client = client(uri)
    runs = mlflow_client.search_runs([experiment_id(uri, experiment)],
                                     filter_string=f"tags.`{RUN_NAME_TAG}` = '{run_name}'", max_results=1)
    return runs[0].info.run_id if runs else None


def child_runs(uri: str, parent_run_id: str, page_size: int = 1000) -> list:
    """Every child run of ``parent_run_id``, page by page: one ``search_runs`` call returns at most
    ``max_results`` runs (1,000 by default), and a long sweep's report must not silently drop the rest."""
    mlflow_client = client(uri)
    experiment = mlflow_client.get_run(parent_run_id).info.experiment_id
    runs, token = [], None
    while True:
        page = mlflow_client.search_runs([experiment], filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
                                         max_results=page_size, page_token=token)
        runs += page
        token = page.token
        if not token:
            return runs


def get_or_create_run(uri: str, experiment: str, run_name: str, kind: str,
                      parent_run_id: str | None = None, tags: dict[str, str] | None = None) -> tuple[str, bool]:
    """(run_id, created). Reuses the run tagged ``run_name`` so a resumed run keeps its record."""
    existing = find_run(uri, experiment, run_name)
    if existing:
        client(uri).update_run(existing, status="RUNNING")
        return existing, False
    all_tags = {RUN_NAME_TAG: run_name, KIND_TAG: kind, **(tags or {})}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = client(uri).create_run(experiment_id(uri, experiment), run_name=run_name, tags=all_tags)
    return run.info.run_id, True


def metric_key(path: str) -> str:
    """A dotted recipe path as an MLflow name: 'phases[0].mask_ratio' -> 'phases.0.mask_ratio'."""
    return re.sub(r"\[(\d+)\]", r".\1", path)


def spec_key(name: str) -> str:
    """The inverse of :func:`metric_key`: 'phases.0.mask_ratio' -> 'phases[0].mask_ratio' (tables
    spell a key as the spec and ``--set`` do)."""
    return re.sub(r"\.(\d+)(?=\.|$)", r"[\1]", name)


def log_params(uri: str, run_id: str, params: dict[str, Any]) -> None:
    """Log params in batches (MLflow caps a batch at 100), values truncated to MLflow's limit."""
    from mlflow.entities import Param

    mlflow_client = client(uri)
    existing = mlflow_client.get_run(run_id).data.params
    items = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in existing]
    for start in range(0, len(items), 100):
        mlflow_client.log_batch(run_id, params=items[start:start + 100])


def finish_run(uri: str, run_id: str, status: str = "FINISHED") -> None:
    client(uri).set_terminated(run_id, status=status)


class AsyncLogger:
    """Queue metrics and artifacts for a background thread that writes them to MLflow."""

    def __init__(self, uri: str, run_id: str):
        self.uri, self.run_id = uri, run_id
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._work, daemon=True, name="mlflow-logger")
        self._errors: list[str] = []
        self._thread.start()

    def metrics(self, values: dict[str, float], step: int) -> None:
        self._queue.put(("metrics", values, step))

    def artifact(self, path: str, artifact_path: str | None = None) -> None:
        self._queue.put(("artifact", path, artifact_path))

    def _work(self) -> None:
        from mlflow.entities import Metric

        mlflow_client = client(self.uri)
        while True:
            item = self._queue.get()
            if item is None:
                self._queue.task_done()
                return
            try:
                if item[0] == "metrics":
                    _, values, step = item
                    stamp = int(time.time() * 1000)
                    batch = [Metric(k, float(v), stamp, step) for k, v in values.items()]
                    for start in range(0, len(batch), 500):
                        mlflow_client.log_batch(self.run_id, metrics=batch[start:start + 500])
                else:
                    mlflow_client.log_artifact(self.run_id, item[1], item[2])
            except Exception as err:  # logging must never kill training; report at close
                self._errors.append(f"{type(err).__name__}: {err}")
            finally:
                self._queue.task_done()

    def flush(self) -> None:
        """Wait until everything queued so far is written."""
        self._queue.join()

    def close(self) -> list[str]:
        """Flush everything queued; returns the errors seen (if any)."""
        self._queue.put(None)
        self._thread.join(timeout=120)
        return self._errors


def log_final_metrics(uri: str, run_id: str, metrics: dict[str, float], last_step: int) -> int:
    """Log a run's authoritative final numbers one step past its last training step, so MLflow's
    "latest" value of every key (the one with the highest step) is the final one. Returns the step."""
    import time as _time

    from mlflow.entities import Metric

    step = int(last_step) + 1
    now = int(_time.time() * 1000)
    items = [Metric(key, float(value), now, step) for key, value in metrics.items()]
    mlflow_client = client(uri)
    for start in range(0, len(items), 500):
        mlflow_client.log_batch(run_id, metrics=items[start:start + 500])
    return step
