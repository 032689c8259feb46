"""The sweep report read back from a real MLflow store (SQLite under tmp_path), no Ray cluster.

The store is written as the product writes it (``get_or_create_run``, ``log_params``,
``trial_final_metrics`` + ``log_final_metrics``, the status tag, ``set_terminated``): a parent sweep
run with ``overhead_usd`` and ``objectives``, and child trials. Every expected number below is
worked out by hand from the numbers logged here.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import mlflow  # noqa: F401  (imported while tests are collected: mutation runs fork after that)
import pytest

from microdit.errors import ConfigError
from microdit.sweep.accounting import trial_final_metrics
from microdit.sweep.report import build_report, compare, mark_unfinished, sweep_report, tune_trial_id
from microdit.sweep.trial import trial_params
from microdit.tracking import (
    client,
    finish_run,
    get_or_create_run,
    log_final_metrics,
    log_params,
)

EXPERIMENT = "microdit-sweeps"
SWEEP = "rep"
OVERHEAD = 0.5
NAIVE = {"model.masking": "naive", "model.mixer_depth": 0}
DEFERRED = {"model.masking": "deferred", "model.mixer_depth": 2}
NAIVE_LABEL = "model.masking=naive,model.mixer_depth=0"  # value_label: full dotted keys, as the spec writes them
DEFERRED_LABEL = "model.masking=deferred,model.mixer_depth=2"


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory) -> Path:
    """An MLflow SQLite file with its tables made (MLflow's migrations take seconds): copied per test."""
    folder = tmp_path_factory.mktemp("template")
    client(f"sqlite:///{folder}/mlflow.db").search_experiments()
    return folder / "mlflow.db"


@pytest.fixture
def uri(empty_store, tmp_path) -> str:
    """A fresh store per test; experiments made in it keep their artifacts beside it (tmp_path)."""
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path}/mlflow.db"


def _parent(uri: str, name: str = SWEEP, objectives: list[str] | None = None, overhead: float | None = OVERHEAD) -> str:
    """The sweep's parent run as ``run_sweep`` makes it: kind tag, overhead metric, objectives param."""
    run_id, _ = get_or_create_run(uri, EXPERIMENT, name, "sweep")
    if overhead is not None:
        client(uri).log_metric(run_id, "overhead_usd", overhead, step=0)
    if objectives is not None:
        log_params(uri, run_id, {"objectives": objectives, "algorithm": "grid"})
    return run_id


def _trial(uri: str, parent: str, trial_id: str, values: dict, *, replicate: int | None = None,
           status: str | None, mlflow_status: str, metrics: dict[str, float], step: int = 10,
           sweep: str = SWEEP) -> str:
    """One child run as ``run_trial`` / ``run_training`` write it: a "train" run with the Tune trial id;
    params before training (the recipe's own, flattened, and the swept ``trial_params``); a
    training-time ``cost_usd`` at ``step``, ``metrics`` one step later; the status tag; the MLflow status."""
    run_id, _ = get_or_create_run(uri, EXPERIMENT, f"{sweep}-{trial_id}", "train", parent_run_id=parent,
                                  tags={"tune.trial_id": trial_id, "microdit.sweep": sweep})
    recipe = {"model.size": "MicroDiT_Nano_4", "phases.0.lr": 0.001, "seed": replicate or 0}
    log_params(uri, run_id, {**recipe, **trial_params(values, replicate or 0, seeds=1 if replicate is None else 2)})
    client(uri).log_metric(run_id, "cost_usd", 0.01, step=step)  # a training-time value, superseded below
    log_final_metrics(uri, run_id, metrics, step)
    if status is not None:
        client(uri).set_tag(run_id, "microdit.trial_status", status)
    if mlflow_status != "RUNNING":
        finish_run(uri, run_id, mlflow_status)
    return run_id


def _final(train_usd: float, fid: float | None, fid_std: float | None = None) -> dict[str, float]:
    """A finished trial's final metrics: evaluation 900 s on 1 device at $1/h = $0.25."""
    evaluation = {"eval_seconds": 900.0}
    if fid is not None:
        evaluation["fid_128"] = fid
    if fid_std is not None:
        evaluation["fid_128_std"] = fid_std
    train = {"cost_usd": train_usd, "gpu_hours": 0.5, "images_seen": 16000, "global_step": 1000}
    return trial_final_metrics(train, evaluation, price_per_device_hour=1.0, devices=1)


def _sweep(uri: str) -> str:
    """The parent and eight children; costs are sums of powers of two, so totals are exact.

    config A (mask 0.0, naive): a0001 FID 100 $2.00 and a0002 FID 104 $2.50 (replicates 0, 1)
    config B (mask 0.75, deferred): a0003 FID 105 ± 1 $1.00
    config C (mask 0.5, deferred, finished without the status tag: an older run): a0004 FID 120 ± 2 $1.50
    a0005 stopped early: FID 50, $0.375 (no final/* metrics, only cost_usd)
    a0006 failed: FID 40, $0.125
    a0007 still running: $0.0625
    a0008 finished but without an FID: $0.50
    """
    parent = _parent(uri, objectives=["fid_128:min", "cost_usd:min"])
    mask = "phases[0].mask_ratio"
    renamed = _trial(uri, parent, "a0001", {mask: 0.0, "variant": NAIVE}, replicate=0, status="finished",
                     mlflow_status="FINISHED", metrics=_final(1.75, 100.0, 3.0))
    client(uri).update_run(renamed, name="renamed in the UI")  # the report still names it by its Ray run name
    _trial(uri, parent, "a0002", {mask: 0.0, "variant": NAIVE}, replicate=1, status="finished",
           mlflow_status="FINISHED", metrics=_final(2.25, 104.0, 3.5))
    _trial(uri, parent, "a0003", {mask: 0.75, "variant": DEFERRED}, replicate=0, status="finished",
           mlflow_status="FINISHED", metrics=_final(0.75, 105.0, 1.0))
    _trial(uri, parent, "a0004", {mask: 0.5, "variant": DEFERRED}, replicate=0, status=None,
           mlflow_status="FINISHED", metrics=_final(1.25, 120.0, 2.0))
    _trial(uri, parent, "a0005", {mask: 0.9, "variant": DEFERRED}, replicate=0, status="stopped_early",
           mlflow_status="KILLED", metrics={"cost_usd": 0.375, "fid_128": 50.0, "fid_128_std": 1.0})
    _trial(uri, parent, "a0006", {mask: 0.9, "variant": NAIVE}, replicate=0, status="failed",
           mlflow_status="FAILED", metrics={"cost_usd": 0.125, "fid_128": 40.0, "fid_128_std": 1.0})
    _trial(uri, parent, "a0007", {mask: 0.25, "variant": NAIVE}, replicate=0, status=None,
           mlflow_status="RUNNING", metrics={"cost_usd": 0.0625})
    _trial(uri, parent, "a0008", {mask: 0.25, "variant": DEFERRED}, replicate=0, status="finished",
           mlflow_status="FINISHED", metrics=_final(0.25, None))
    return parent


TRIALS_USD = 2.0 + 2.5 + 1.0 + 1.5 + 0.375 + 0.125 + 0.0625 + 0.5  # 8.0625: every child, whatever its status
SPENT = TRIALS_USD + OVERHEAD  # 8.5625


def _parent_record(uri: str, run_id: str) -> tuple:
    """What a write to the parent run would change: its artifacts, metrics and their histories."""
    mlflow_client = client(uri)
    run = mlflow_client.get_run(run_id)
    histories = {k: len(mlflow_client.get_metric_history(run_id, k)) for k in run.data.metrics}
    return sorted(a.path for a in mlflow_client.list_artifacts(run_id)), run.data.metrics, histories


def test_report_counts_costs_front_and_noise_from_mlflow(uri):
    parent = _sweep(uri)
    before = _parent_record(uri, parent)
    report = compare(SWEEP, uri)  # objectives from the parent's ``objectives`` param
    assert _parent_record(uri, parent) == before  # read-only: nothing logged to the parent

    # every child is a row, named by its run name, sorted; status: the tag, else MLflow's status
    assert [(r["trial"], r["status"]) for r in report.rows] == [
        ("rep-a0001", "finished"), ("rep-a0002", "finished"), ("rep-a0003", "finished"), ("rep-a0004", "finished"),
        ("rep-a0005", "stopped_early"), ("rep-a0006", "failed"), ("rep-a0007", "running"), ("rep-a0008", "finished")]
    first = report.rows[0]
    # keys as the spec writes them; numbers back as numbers, a bundle as its label
    assert first["phases[0].mask_ratio"] == 0.0 and isinstance(first["phases[0].mask_ratio"], float)
    assert first["variant"] == NAIVE_LABEL and first["replicate"] == 0 and report.rows[1]["replicate"] == 1
    assert "phases.0.mask_ratio" not in first and "model.size" not in first  # only the swept params
    assert [r["cost_usd"] for r in report.rows] == [2.0, 2.5, 1.0, 1.5, 0.375, 0.125, 0.0625, 0.5]
    assert first["final/train_usd"] == 1.75 and first["final/eval_usd"] == 0.25  # 900 s x 1 device x $1/h

    # a0008 has no FID: not a finished point; stopped early and failed never count
    assert (report.finished, report.stopped_early, report.failed) == (4, 1, 1)
    assert report.overhead_usd == OVERHEAD and report.spent_usd == SPENT == 8.5625

    # configurations: replicates of A averaged (mean, std with ddof 1); B and C keep their own FID std
    a, b, c = report.configs
    assert (a["phases[0].mask_ratio"], a["variant"], a["n"], a["trials"]) == (0.0, NAIVE_LABEL, 2, "a0001,a0002")
    assert a["fid_128"] == 102.0 and a["fid_128_std"] == pytest.approx(math.sqrt(8.0), rel=1e-12)  # |100-104|/sqrt 2
    assert a["cost_usd"] == 2.25 and a["cost_usd_std"] == pytest.approx(0.5 / math.sqrt(2.0), rel=1e-12)
    assert a["images_seen"] == 16000.0 and a["images_seen_std"] == 0.0
    assert (b["phases[0].mask_ratio"], b["variant"], b["n"], b["trials"]) == (0.75, DEFERRED_LABEL, 1, "a0003")
    assert (b["fid_128"], b["fid_128_std"], b["cost_usd"]) == (105.0, 1.0, 1.0) and "cost_usd_std" not in b
    assert (c["phases[0].mask_ratio"], c["fid_128"], c["fid_128_std"], c["cost_usd"]) == (0.5, 120.0, 2.0, 1.5)
    assert [conf["trials"] for conf in report.configs] == ["a0001,a0002", "a0003", "a0004"]

    # front over (FID, cost), both min: A has the best FID, B the lowest cost; C is dominated by B
    # (120 > 105 and $1.50 > $1.00). a0005 and a0006 would dominate all three: they are not points.
    assert report.front == [0, 1]
    # within noise of the best (A, 102 ± sqrt 8): B |105 - 102| = 3 <= 2 x hypot(1, sqrt 8) = 6;
    # C |120 - 102| = 18 > 2 x hypot(2, sqrt 8) = 2 sqrt 12 = 6.93
    assert [conf["vs_best"] for conf in report.configs] == ["best", "within noise", "worse"]

    lines = report.text.splitlines()
    assert lines[0] == ("sweep rep: 8 trials — 4 finished, 1 stopped early, 1 failed; spent $8.56 = trials $8.06 "
                        "+ shared overhead $0.5 (data, FID reference statistics)")
    assert lines[1] == lines[8] == lines[14] == ""  # a blank line between the sections
    assert lines[2] == "configurations (mean ± std over seeds; one seed: FID ± its half-sampling std):"
    assert lines[3].split() == ["phases[0].mask_ratio", "variant", "n", "fid_128", "cost_usd", "images_seen",
                                "vs_best", "trials"]
    assert [line.split()[:2] for line in lines[5:8]] == [["0", NAIVE_LABEL], ["0.75", DEFERRED_LABEL],
                                                          ["0.5", DEFERRED_LABEL]]
    assert "102.0 ± 2.8" in lines[5] and "2.25 ± 0.35" in lines[5] and "within noise" in lines[6]
    assert lines[9] == "Pareto front (fid_128 [min] vs cost_usd [min]):"
    # the front's rows in order of the last objective (cost): B ($1) before A ($2.25)
    assert [line.split()[:2] for line in lines[12:14]] == [["0.75", DEFERRED_LABEL], ["0", NAIVE_LABEL]]
    assert lines[15] == "all trials:"
    assert lines[16].split() == ["trial", "status", "phases[0].mask_ratio", "variant", "replicate", "fid_128",
                                 "cost_usd", "fid_128_std", "final/train_usd", "final/eval_usd", "images_seen"]
    assert len(lines) == 16 + 2 + 8 + 3
    assert lines[-3] == f"best fid_128 (min): phases[0].mask_ratio=0.0, variant={NAIVE_LABEL} = 102.0 ± 2.8"
    assert lines[-2] == f"best cost_usd (min): phases[0].mask_ratio=0.75, variant={DEFERRED_LABEL} = 1"
    assert lines[-1] == ("within noise of the best fid_128 (|difference| <= 2 x combined std): "
                         f"phases[0].mask_ratio=0.75, variant={DEFERRED_LABEL}")

    # every finished trial saw 16,000 images (a0008 counts here: it has this objective): the first
    # configuration is best, the others tie with it (listed, in order)
    seen = compare(SWEEP, uri, objectives=[("images_seen", "max")])
    assert (seen.finished, [c["vs_best"] for c in seen.configs]) == (5, ["best"] + ["within noise"] * 3)
    assert [c["cost_usd"] for c in seen.configs] == [2.25, 1.0, 1.5, 0.5]  # cost is averaged all the same
    assert seen.text.splitlines()[-1] == ("within noise of the best images_seen (|difference| <= 2 x combined std): "
                                          f"phases[0].mask_ratio=0.75, variant={DEFERRED_LABEL}; "
                                          f"phases[0].mask_ratio=0.5, variant={DEFERRED_LABEL}; "
                                          f"phases[0].mask_ratio=0.25, variant={DEFERRED_LABEL}")
    assert _parent_record(uri, parent) == before


def test_build_report_logs_its_tables_to_the_parent(uri, tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    figures = []
    original = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: (figures.append(self), original(self, *a, **k))[1])
    parent = _sweep(uri)
    report = build_report(uri, parent, [("fid_128", "min"), ("cost_usd", "min")], SWEEP, log_to_parent=True)
    # the plot: the configurations, quality (first objective) against cost (the last)
    (ax,) = figures[0].axes
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == ("cost_usd", "fid_128", "rep: fid_128 vs cost_usd")
    assert ax.collections[0].get_offsets().tolist() == [[2.25, 102.0], [1.0, 105.0], [1.5, 120.0]]
    (front,) = [line for line in ax.lines if line.get_label() == "Pareto front"]  # B then A, by cost
    assert (list(front.get_xdata()), list(front.get_ydata())) == ([1.0, 2.25], [105.0, 102.0])
    assert [t.get_text() for t in ax.texts] == [f"mask_ratio=0, variant={NAIVE_LABEL}",
                                                f"mask_ratio=0.75, variant={DEFERRED_LABEL}",
                                                f"mask_ratio=0.5, variant={DEFERRED_LABEL}"]
    mlflow_client = client(uri)
    run = mlflow_client.get_run(parent)
    assert sorted(a.path for a in mlflow_client.list_artifacts(parent)) == ["pareto.png", "pareto.txt",
                                                                            "sweep_trials.json"]
    assert run.data.metrics["spent_usd"] == 8.5625 and run.data.metrics["trials_finished"] == 4
    folder = tmp_path / "downloaded"
    folder.mkdir()
    assert Path(mlflow_client.download_artifacts(parent, "pareto.txt", str(folder))).read_text() == report.text
    png = Path(mlflow_client.download_artifacts(parent, "pareto.png", str(folder))).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    table = json.loads(Path(mlflow_client.download_artifacts(parent, "sweep_trials.json", str(folder))).read_text())
    columns = table["columns"]
    assert columns == sorted(columns) and {"trial", "status", "phases[0].mask_ratio", "variant"} <= set(columns)
    rows = [dict(zip(columns, values)) for values in table["data"]]
    assert [r["trial"] for r in rows] == [f"rep-a000{i}" for i in range(1, 9)]
    assert rows[4]["status"] == "stopped_early" and rows[4]["cost_usd"] == 0.375
    assert rows[4]["final/cost_usd"] is None  # a cell no run has is empty, not missing
    assert rows[0]["variant"] == NAIVE_LABEL and rows[0]["fid_128"] == 100.0

    # ``compare(..., write=True)`` is the same report, logged again
    again = compare(SWEEP, uri, write=True)
    assert again.text == report.text
    assert len(mlflow_client.get_metric_history(parent, "spent_usd")) == 2

    # three objectives: the plot is still the first (quality) against the last (cost)
    compare(SWEEP, uri, objectives=[("fid_128", "min"), ("images_seen", "max"), ("cost_usd", "min")], write=True)
    (ax,) = figures[-1].axes
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == ("cost_usd", "fid_128", "rep: fid_128 vs cost_usd")


def test_table_cells_are_kept_as_numbers_or_text():
    from microdit.sweep.report import _cell

    assert [_cell(1), _cell(2.5), _cell("a"), _cell(None)] == [1, 2.5, "a", None]
    assert _cell([1, 2]) == "[1, 2]" and _cell({"a": 1}) == "{'a': 1}"  # anything else as text


def test_sweep_report_marks_unfinished_trials_then_logs_the_report(uri):
    """What ``run_sweep`` calls after ``Tuner.fit``: the still-running a0007 was stopped by Tune."""
    import yaml

    from microdit.config.shipped import SWEEPS, resolve
    from microdit.config.sweep import load_sweep

    spec = load_sweep({**yaml.safe_load(resolve("quickstart", SWEEPS).read_text()), "name": SWEEP})
    parent = _sweep(uri)
    report = sweep_report(spec, uri, parent, [Result(metrics={"trial_id": "a0007", "loss": 1.0})], "unused")
    assert (report.finished, report.stopped_early, report.failed, report.spent_usd) == (4, 2, 1, SPENT)
    assert report.rows[6]["status"] == "stopped_early" and report.front == [0, 1]
    assert report.text.splitlines()[0].startswith("sweep rep: 8 trials — 4 finished, 2 stopped early, 1 failed;")
    mlflow_client = client(uri)
    assert len(mlflow_client.list_artifacts(parent)) == 3
    assert mlflow_client.get_run(parent).data.metrics["trials_finished"] == 4


def test_compare_refuses_unknown_names_and_non_sweeps(uri):
    _sweep(uri)
    with pytest.raises(ConfigError) as err:
        compare("nope", uri)
    assert str(err.value) == f"no sweep named 'nope' in MLflow experiment 'microdit-sweeps' at {uri}"
    with pytest.raises(ConfigError) as err:
        compare("rep-a0001", uri)
    assert str(err.value) == "MLflow run 'rep-a0001' is not a sweep (kind 'train')"


def test_compare_an_older_sweep_with_default_objectives_or_given_ones(uri):
    """An older sweep: no ``objectives`` param (then ``fid`` and ``cost_usd``, both min), no
    overhead metric, children without the run-name tag (named by MLflow's run name). Explicit
    objectives override; one objective draws no plot; ``max`` picks the largest."""
    parent = _parent(uri, "old", overhead=None)
    experiment = client(uri).get_run(parent).info.experiment_id
    for trial_id, fid, train_usd in (("b0001", 60.0, 0.75), ("b0002", 50.0, 1.75)):
        run_id = client(uri).create_run(experiment, run_name=f"old-{trial_id}",
                                        tags={"mlflow.parentRunId": parent}).info.run_id
        log_params(uri, run_id, {"sweep.model.mixer_depth": 1 if fid == 60.0 else 2})
        metrics = trial_final_metrics({"cost_usd": train_usd, "gpu_hours": 1.0, "images_seen": 100 * fid,
                                       "global_step": 10}, {"fid": fid}, 1.0, 1)
        log_final_metrics(uri, run_id, metrics, 10)
        finish_run(uri, run_id)
    report = compare("old", uri)
    assert report.text.splitlines()[0] == ("sweep old: 2 trials — 2 finished, 0 stopped early, 0 failed; "
                                           "spent $2.50 = trials $2.50 + shared overhead $0 (data, FID "
                                           "reference statistics)")
    assert [r["trial"] for r in report.rows] == ["old-b0001", "old-b0002"]
    # no replicates, no FID std: the trial table has neither column
    lines = report.text.splitlines()
    assert lines[lines.index("all trials:") + 1].split() == ["trial", "status", "model.mixer_depth", "fid", "cost_usd",
                                                    "final/train_usd", "final/eval_usd", "images_seen"]
    assert "Pareto front (fid [min] vs cost_usd [min]):" in report.text
    assert report.front == [0, 1] and [c["model.mixer_depth"] for c in report.configs] == [1, 2]
    # FID 60 vs 50 with no std: only exact ties are within noise
    assert [c["vs_best"] for c in report.configs] == ["worse", "best"]
    assert report.text.splitlines()[-1] == "best cost_usd (min): model.mixer_depth=1 = 0.75"
    assert "within noise" not in report.text.splitlines()[-1]

    maxed = compare("old", uri, objectives=[("images_seen", "max")], write=True)
    # images seen: 6,000 (depth 1) and 5,000 (depth 2)
    assert maxed.front == [0] and [c["vs_best"] for c in maxed.configs] == ["best", "worse"]
    assert maxed.text.splitlines()[-1] == "best images_seen (max): model.mixer_depth=1 = 6000"
    assert "Pareto front (images_seen [max]):" in maxed.text
    mlflow_client = client(uri)
    assert sorted(a.path for a in mlflow_client.list_artifacts(parent)) == ["pareto.txt", "sweep_trials.json"]


def test_a_sweep_with_no_finished_trial_reports_counts_and_cost(uri):
    parent = _parent(uri, objectives=["fid_128:min", "cost_usd:min"])
    _trial(uri, parent, "c0001", {"phases[0].mask_ratio": 0.5}, status="failed", mlflow_status="FAILED",
           metrics={"cost_usd": 0.25})
    # failed at start-up: params and tags, no metric at all
    run_id, _ = get_or_create_run(uri, EXPERIMENT, f"{SWEEP}-c0002", "train", parent_run_id=parent)
    log_params(uri, run_id, trial_params({"phases[0].mask_ratio": 0.75}, 0, 1))
    client(uri).set_tag(run_id, "microdit.trial_status", "failed")
    finish_run(uri, run_id, "FAILED")
    objectives = [("fid_128", "min"), ("cost_usd", "min")]
    assert build_report(uri, parent, objectives, SWEEP).failed == 2
    assert client(uri).list_artifacts(parent) == []  # by default the report is not logged
    report = build_report(uri, parent, objectives, SWEEP, log_to_parent=True)
    assert (report.finished, report.failed, report.configs, report.front) == (0, 2, [], [])
    assert [r["cost_usd"] for r in report.rows] == [0.25, 0.0]  # nothing logged: nothing spent
    assert report.spent_usd == 0.75 and not any(line.startswith("best ") for line in report.text.splitlines())
    assert report.text.splitlines()[0].startswith("sweep rep: 2 trials — 0 finished, 0 stopped early, 2 failed; "
                                                  "spent $0.75 = trials $0.25")
    assert "pareto.png" not in [a.path for a in client(uri).list_artifacts(parent)]


def test_restarts_count_tune_reruns_and_train_resumes_once_each(uri):
    """A trial's restarts: Tune reruns (``microdit.trial_attempts``) or resumes from a checkpoint
    (``resumed_from_step``, logged by Train's own restarts and by reruns that found a checkpoint),
    whichever is more: a rerun that resumed is one restart, not two."""
    parent = _parent(uri, objectives=["fid_128:min", "cost_usd:min"])
    cases = {"d0001": (None, []), "d0002": ("2", [4]), "d0003": ("2", []), "d0004": (None, [3, 7]),
             "d0005": ("2", [2, 9])}  # (attempts tag, resumed_from_step values)
    for index, (trial, (attempts, resumed)) in enumerate(cases.items()):
        run_id = _trial(uri, parent, trial, {"phases[0].mask_ratio": index / 8}, status="finished",
                        mlflow_status="FINISHED", metrics=_final(1.0, 100.0 + index, 1.0))
        if attempts:
            client(uri).set_tag(run_id, "microdit.trial_attempts", attempts)
        for step in resumed:
            client(uri).log_metric(run_id, "resumed_from_step", float(step), step=step)
    report = build_report(uri, parent, [("fid_128", "min"), ("cost_usd", "min")], SWEEP)
    assert {r["trial"].rsplit("-", 1)[1]: r["restarts"] for r in report.rows} == {
        "d0001": 0, "d0002": 1, "d0003": 1, "d0004": 2, "d0005": 2}
    assert "5 finished, 0 stopped early, 0 failed (4 restarted after a failure, from their last checkpoint); " \
        in report.text.splitlines()[0]
    lines = report.text.splitlines()
    header = lines[lines.index("all trials:") + 1]
    assert header.split()[:3] == ["trial", "status", "restarts"]


@dataclass
class Result:
    """What ``mark_unfinished`` reads of a ``ray.tune.Result``."""

    metrics: dict | None = field(default_factory=dict)
    error: Exception | None = None
    path: str | None = None


def test_mark_unfinished_tags_and_terminates_stopped_and_failed_trials(uri):
    parent = _parent(uri)
    done = {"cost_usd": 1.0}
    ids = {}
    for trial_id, status in (("d0001", "RUNNING"), ("d0002", "RUNNING"), ("d0003", "RUNNING"),
                             ("d0004", "RUNNING"), ("d0005", "FINISHED"), ("d0006", "RUNNING"), ("d0007", "FAILED")):
        ids[trial_id] = _trial(uri, parent, trial_id, {"model.mixer_depth": 1}, status=None,
                               mlflow_status=status, metrics=done)
    other = _parent(uri, "other")  # a trial of another sweep with the same Tune id is not touched
    stray = _trial(uri, other, "d0002", {"model.mixer_depth": 1}, status=None, mlflow_status="RUNNING", metrics=done,
                   sweep="other")
    results = [
        Result(metrics={"trial_id": "d0001", "budget_done": 1.0}),  # finished: left alone
        Result(metrics={"trial_id": "d0002", "loss": 0.3}),  # stopped by ASHA
        Result(metrics={}, error=RuntimeError("boom"),  # errored before any report: id from its folder
               path="/r/sweeps/rep/tune/run_trial_d0003_00002_2_x0=1_2026-01-01_00-00-00"),
        Result(metrics={"trial_id": "d0004", "budget_done": 1.0}, error=RuntimeError("late")),  # failed after it
        Result(metrics=None, path="/r/sweeps/rep/tune/run_trial_d0005_00004_4_x0=1_2026-01-01_00-00-00"),
        # ^ stopped, nothing reported; its run already ended FINISHED: that status is kept
        Result(metrics={"trial_id": "eeeee"}),  # no MLflow run: skipped
        Result(metrics={"trial_id": "d0007", "milestone_target_usd": 0.1}),  # stopped at a rung, run left FAILED
    ]
    mark_unfinished(uri, parent, results)
    mlflow_client = client(uri)
    seen = {t: (mlflow_client.get_run(r).data.tags.get("microdit.trial_status"), mlflow_client.get_run(r).info.status)
            for t, r in ids.items()}
    assert seen == {"d0001": (None, "RUNNING"), "d0002": ("stopped_early", "KILLED"), "d0003": ("failed", "FAILED"),
                    "d0004": ("failed", "FAILED"), "d0005": ("stopped_early", "FINISHED"), "d0006": (None, "RUNNING"),
                    "d0007": ("stopped_early", "KILLED")}
    assert mlflow_client.get_run(stray).info.status == "RUNNING"
    assert "microdit.trial_status" not in mlflow_client.get_run(stray).data.tags


@pytest.mark.parametrize(("metrics", "path", "expected"), [
    ({"trial_id": "abc12"}, "/x/run_trial_4b44bbbe_00001_1_x0=0.75_2026-12-01_06-00-00", "abc12"),
    ({"trial_id": ""}, "/x/run_trial_4b44bbbe_00001_1_x0=0.75_2026-12-01_06-00-00", "4b44bbbe"),
    (None, "/x/run_trial_4b44b_00012_12_x0=1_2026-12-01_06-00-00", "4b44b"),  # the shortest id: 5 hex digits
    ({}, "/x/run_trial_4b44_00001_1", None),  # 4 hex digits: not an id
    ({}, "/x/run_trial_4b44bbbe_0001_1", None),  # the index has 5 digits
    ({}, None, None),
    ({}, "", None),
])
def test_tune_trial_id_from_metrics_or_directory_name(metrics, path, expected):
    assert tune_trial_id(Result(metrics=metrics, path=path)) == expected


def test_child_runs_reads_every_page(uri):
    """MLflow returns at most ``max_results`` runs per call: a report of more trials than one page
    holds must read them all (pages of 2 here), and only the children of its own parent."""
    from microdit.tracking import child_runs

    parent = _parent(uri)
    other = _parent(uri, name="other-sweep")
    ids = {_trial(uri, parent, f"c{i:04d}", {"phases[0].mask_ratio": 0.5}, status=None, mlflow_status="FINISHED",
                  metrics=_final(1.0, 100.0)) for i in range(5)}
    _trial(uri, other, "d0001", {"phases[0].mask_ratio": 0.5}, status=None, mlflow_status="FINISHED",
           metrics=_final(1.0, 100.0), sweep="other-sweep")
    for page_size in (2, 5, 1000):
        assert sorted(r.info.run_id for r in child_runs(uri, parent, page_size=page_size)) == sorted(ids)
