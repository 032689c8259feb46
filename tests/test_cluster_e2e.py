"""Beyond one machine: two Ray nodes, object storage as the storage root, an MLflow server.

Everything real and on 127.0.0.1: a two-node ``ray.cluster_utils.Cluster`` (1 CPU per node), the
S3-compatible server of ``conftest.s3_server`` as ``MICRODIT_ROOT=s3://…``, and ``mlflow server``
with its artifacts in the same bucket. The product runs as users run it: the ``jobs/*.py`` entry
points in fresh driver processes joining the cluster through ``RAY_ADDRESS``:

1. ``jobs/prepare.py demo`` writes the tiny demo sets into the bucket;
2. ``jobs/train.py`` with a SQLite MLflow store is refused (two nodes: use a server);
3. ``jobs/train.py`` trains 2 workers, one per node; once the first checkpoint is in the bucket
   the non-head node is killed and a fresh node added: the run resumes from the bucket and ends
   at exactly its planned step count, the final weights in its last checkpoint in the bucket;
4. ``jobs/sweep.py`` runs a 2-trial Optuna TPE sweep (FID + cost, both trials at once) on the same cluster, each trial
   an iso-cost dollar budget cut into a swept phase and a fine-tune (dollar-length phases under
   ``max_dollars``, the path every shipped ablation spec takes); the study lives in the bucket;
5. ``microdit compare`` from another process reads the results back from the MLflow server.

The Train worker reports where it imported ``microdit`` from: the copy Ray shipped
(``py_modules``), not the editable install. The pytest process itself never joins this cluster.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from net_testing import free_port, wait_for_port

REPO = Path(__file__).resolve().parents[1]
STEPS, BATCH, EVERY = 32, 8, 4


@pytest.fixture
def mlflow_server(s3_bucket, tmp_path):
    """``mlflow server`` on 127.0.0.1: SQLite backend, artifacts proxied into the bucket."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow-server.db'}",
         "--artifacts-destination", f"{s3_bucket}/mlartifacts", "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "mlflow-server.log", "w"))
    try:
        wait_for_port(port, proc, "mlflow server")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def two_nodes():
    """A head node and a worker node (1 CPU each) on 127.0.0.1; the pytest process stays outside."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, connect=False, head_node_args={
        "num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": True,
        "dashboard_host": "127.0.0.1", "dashboard_port": free_port()})
    cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
    try:
        yield cluster
    finally:
        cluster.shutdown()


def _env(cluster, root: str, mlflow_uri: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MICRODIT_", "RAY_ADDRESS", "MLFLOW_"))}
    # Loopback cluster: without this Ray rewrites 127.0.0.1 to the machine's address, where the
    # cluster does not listen.
    env.update({"RAY_ADDRESS": cluster.address, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
                "MICRODIT_ROOT": root, "MLFLOW_TRACKING_URI": mlflow_uri, "PYTHONUNBUFFERED": "1"})
    return env


def _run(args: list[str], env: dict[str, str], timeout: float) -> str:
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args[0]} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc.stdout


def _recipe(tmp_path: Path) -> Path:
    from microdit.config.recipe import load_recipe

    recipe = load_recipe("demo", {
        "name": "two-nodes", "model": {"size": "MicroDiT_Nano_4"},
        "phases": [{"name": "only", "resolution": 32, "mask_ratio": 0.5, "steps": STEPS, "batch_size": BATCH,
                    "lr": 1.0e-3, "ema_half_life_images": 32}],
        "data.real": "demo_real", "data.synthetic": "demo_synthetic", "data.synthetic_fraction": 0.25,
        "data.shuffle_buffer": 16,
        "resources.num_workers": 2, "resources.cpus_per_worker": 1.0,
        "tracking.log_every_steps": 2, "tracking.checkpoint_every_steps": EVERY, "tracking.keep_checkpoints": 2,
        "tracking.max_failures": 2, "tracking.sample_grid": False, "tracking.experiment": "cluster-test",
    })
    path = tmp_path / "two_nodes.yaml"
    path.write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False))
    return path


TRIAL_USD, FINETUNE_USD = 8e-5, 2e-5


def _sweep_spec(tmp_path: Path) -> Path:
    spec = {
        "name": "cluster-sweep", "base": "demo",
        "overrides": {
            "model.size": "MicroDiT_Nano_4", "data.real": "demo_real", "data.synthetic": "demo_synthetic",
            "data.shuffle_buffer": 16,
            "phases": [{"name": "only", "resolution": 32, "mask_ratio": 0.5, "steps": 3, "batch_size": 8,
                        "lr": 1.0e-3}],
            "resources.num_workers": 1, "resources.cpus_per_worker": 0.5,
            "tracking.log_every_steps": 1, "tracking.checkpoint_every_steps": 10, "tracking.sample_grid": False,
        },
        "space": {"phases[0].mask_ratio": {"uniform": [0.0, 0.6]}},
        "objectives": [{"metric": "fid_8", "mode": "min"}, {"metric": "cost_usd", "mode": "min"}],
        "trial_budget": {"dollars": TRIAL_USD},  # ~6 s of one CPU worker at $0.05/h
        "finetune": {"dollars": FINETUNE_USD},
        "budget": {"max_trials": 2, "max_concurrent": 2},  # both at once: the cluster fits two 0.5-CPU trials
        "search": {"algorithm": "tpe", "seed": 0},
        "evaluation": {"reference": "demo_real_heldout", "num_samples": 8, "steps": 3, "guidance": 2.0},
    }
    path = tmp_path / "cluster_sweep.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _wait_for_checkpoint(run_dir: str, proc: subprocess.Popen, timeout: float = 240) -> None:
    """Until Ray Train has registered a checkpoint of the run (its manager snapshot in the bucket
    names one): a checkpoint uploaded but not yet registered would not be resumed from."""
    from microdit import storage

    snapshot = storage.join(run_dir, "checkpoint_manager_snapshot.json")
    deadline = time.time() + timeout
    while time.time() < deadline:
        if storage.exists(snapshot) and "checkpoint_" in storage.read_text(snapshot):
            return
        assert proc.poll() is None, f"training ended before its first checkpoint:\n{proc.stdout.read()[-4000:]}"
        time.sleep(0.2)
    raise AssertionError(f"no registered checkpoint under {run_dir} after {timeout} s")


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc: psutil is not a dependency)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                parents.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def _kill_node(cluster, node) -> list[int]:
    """A node failure: its raylet and every process it started (the Train worker on it) die at once.
    (``remove_node`` alone stops the raylet; a worker busy in a collective would notice only later.)"""
    children = _descendants(node.all_processes["raylet"][0].process.pid)
    cluster.remove_node(node, allow_graceful=False)
    for child in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
    return children


def test_two_nodes_object_storage_and_mlflow_server(two_nodes, mlflow_server, s3_bucket, tmp_path):
    from mlflow.tracking import MlflowClient

    from microdit import storage
    from microdit.train.state import load_weights

    root = f"{s3_bucket}/microdit"
    env = _env(two_nodes, root, mlflow_server)

    # 1. the demo sets, prepared by encoder actors on the cluster, land in the bucket
    _run(["jobs/prepare.py", "demo", "--size", "tiny", "--resolution", "32", "--no-progress"], env, 300)
    data = storage.join(root, "data")
    assert storage.list_names(data) == ["demo_real", "demo_real_heldout", "demo_synthetic"]
    assert storage.read_json(storage.join(data, "demo_real", "manifest.json"))["rows_total"] == 48

    # 2. a file-based MLflow store is refused on a multi-node cluster, before anything runs
    recipe = str(_recipe(tmp_path))
    local_store = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'local.db'}"}
    refused = subprocess.run([sys.executable, "jobs/train.py", recipe], cwd=REPO, env=local_store,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "the Ray cluster has 2 nodes" in refused.stderr and "MLFLOW_TRACKING_URI=http://" in refused.stderr
    assert not storage.exists(storage.join(root, "runs", "two-nodes"))  # nothing started

    # 3. train on both nodes; kill the worker node after the first checkpoint; resume from the bucket
    run_dir = storage.join(root, "runs", "two-nodes")
    train = subprocess.Popen([sys.executable, "jobs/train.py", recipe], cwd=REPO, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for_checkpoint(run_dir, train)
        killed = _kill_node(two_nodes, two_nodes.list_all_nodes()[1])
        two_nodes.add_node(num_cpus=1, node_ip_address="127.0.0.1")
        output, _ = train.communicate(timeout=420)
    finally:
        if train.poll() is None:
            train.kill()
    assert train.returncode == 0, output[-6000:]

    client = MlflowClient(tracking_uri=mlflow_server)
    (run,) = client.search_runs([client.get_experiment_by_name("cluster-test").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.metrics["final/global_step"] == STEPS  # exactly the plan, replays not counted twice
    assert run.data.metrics["final/images_seen"] == STEPS * BATCH
    resumed = [int(m.value) for m in client.get_metric_history(run.info.run_id, "resumed_from_step")]
    (tmp_path / "train.log").write_text(output)
    assert resumed and all(0 < s < STEPS and s % EVERY == 0 for s in resumed), (killed, str(tmp_path / "train.log"))
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "images_seen")]
    assert sorted(set(steps)) == list(range(2, STEPS + 1, 2))
    assert steps.count(2) == 1  # steps before the first checkpoint were never replayed
    weights = run.data.tags["microdit.weights"]
    assert weights.startswith(run_dir + "/checkpoint_") and weights.endswith("/final_weights.pt")
    assert load_weights(weights).config.patch_size == 4  # read back from the bucket
    shipped = run.data.tags["microdit.worker_package"]
    assert "runtime_resources" in shipped and "py_modules" in shipped, shipped  # not the editable install
    assert str(REPO) not in shipped

    # 4. a 2-trial sweep on the same cluster, state in the bucket
    _run(["jobs/sweep.py", str(_sweep_spec(tmp_path))], env, 600)
    assert "spec.json" in storage.list_names(storage.join(root, "sweeps", "cluster-sweep"))

    # 5. the results read back from the MLflow server by another process
    table = _run(["-c", "import sys; from microdit.cli.main import main; sys.exit(main(['compare', 'cluster-sweep']))"],
                 env, 120)
    assert "sweep cluster-sweep: 2 trials — 2 finished, 0 stopped early, 0 failed" in table, table
    trials = client.search_runs([client.get_experiment_by_name("microdit-sweeps").experiment_id],
                                filter_string="tags.`microdit.kind` = 'train'")
    assert len(trials) == 2 and all(t.data.metrics.get("fid_8", 0) > 0 for t in trials)
    ratios = sorted(float(t.data.params["sweep.phases.0.mask_ratio"]) for t in trials)
    assert ratios[0] != ratios[1] and all(0.0 <= r <= 0.6 for r in ratios)  # sampled by TPE from the range
    for trial in trials:  # each spent its dollar budget: the swept phase, then the fine-tune at ratio 0
        phases = {m.value for m in client.get_metric_history(trial.info.run_id, "phase")}
        assert phases == {0.0, 1.0}, phases
        train_usd = trial.data.metrics["final/train_usd"]
        assert TRIAL_USD <= train_usd < 3 * TRIAL_USD, train_usd  # stops at the first step past the budget
    assert all(t.info.artifact_uri.startswith("mlflow-artifacts:") for t in trials)  # through the server
