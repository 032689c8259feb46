"""Many runs on one machine (issue 22): each command's local Ray instance is its own, a fresh MLflow
store is created once however many commands open it, and one run name is one live process.

Each check runs what two concurrent commands would run, in real separate processes (a Ray instance,
an MLflow SQLite store, file locks): the test process's own Ray cluster stays out of it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from microdit.errors import ConfigError

# A command's Ray instance (connect_ray), then a second local instance started after it on the same
# machine; a worker of the first then resolves "the" cluster as Ray's internals do (the state API,
# Train's placement-group cleaner: no address given) and queries its actors.
ISOLATION = textwrap.dedent("""
    import json, os, subprocess, sys
    import ray
    from microdit.cluster import connect_ray

    connect_ray()
    other = subprocess.Popen([sys.executable, "-c", "import ray, time; ray.init(address='local', "
                              "include_dashboard=False); print(ray.get_runtime_context().gcs_address, flush=True); "
                              "time.sleep(120)"], stdout=subprocess.PIPE, text=True,
                             env={k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_TMPDIR")})
    other_address = other.stdout.readline().strip()

    @ray.remote
    def resolve():
        from ray._private.services import canonicalize_bootstrap_address_or_die
        from ray.util.state import list_actors
        return canonicalize_bootstrap_address_or_die(None), [a.class_name for a in list_actors()]

    class_name = ray.remote(num_cpus=0)(type("Marker", (), {"ping": lambda self: 1}))
    marker = class_name.remote()
    ray.get(marker.ping.remote())
    worker_sees, actors = ray.get(resolve.remote())
    from ray._private.services import canonicalize_bootstrap_address_or_die
    print(json.dumps({"mine": ray.get_runtime_context().gcs_address, "other": other_address,
                      "worker_sees": worker_sees, "driver_sees": canonicalize_bootstrap_address_or_die(None),
                      "actors": actors, "tmpdir": os.environ["RAY_TMPDIR"]}))
    other.kill()
""")


@pytest.mark.ray
def test_a_commands_local_ray_instance_is_the_one_its_workers_and_ray_internals_resolve():
    """Before: a worker asking for "the" cluster found two GCS processes and raised "Found multiple
    active Ray instances ... set RAY_ADDRESS" (Train's cleaner thread), or followed the machine-wide
    address file to the newest instance (another run's) and removed live placement groups."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_TMPDIR")}
    done = subprocess.run([sys.executable, "-c", ISOLATION], capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["mine"] != seen["other"]
    assert seen["worker_sees"] == seen["driver_sees"] == seen["mine"]
    assert "Marker" in seen["actors"]  # the state API in the worker queried this instance
    assert os.path.basename(seen["tmpdir"]).startswith("microdit-ray-")  # its logs in a folder of its own
    assert "Found multiple active Ray instances" not in done.stderr


CREATE_STORE = textwrap.dedent("""
    import sys
    from microdit.tracking import client
    print(len(client(sys.argv[1]).search_experiments()))
""")


def test_two_commands_creating_one_fresh_mlflow_store_both_succeed(tmp_path):
    """Before: the second died with alembic's "Online migration expected to match one row ... 0 found"
    (measured: 3 of 3 tries with two processes opening a fresh SQLite store at once)."""
    for attempt in range(2):
        uri = f"sqlite:///{tmp_path / f'root{attempt}' / 'mlflow.db'}"
        both = [subprocess.Popen([sys.executable, "-c", CREATE_STORE, uri], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for _ in range(2)]
        results = [process.communicate(timeout=120) for process in both]
        for process, (out, err) in zip(both, results):
            assert process.returncode == 0, err[-2000:]
            assert out.strip() == "1"  # the Default experiment, once


def test_one_live_process_per_run_name(tmp_path):
    """A second holder of a sweep or run name is refused at once, naming the run and its holder; another
    name, or the same name after the first finished (or died: the kernel drops the lock), goes ahead."""
    from microdit.exclusive import held_exclusively

    where = str(tmp_path / "sweeps" / "quickstart")
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from microdit.exclusive import held_exclusively
        with held_exclusively("sweep", "quickstart", {where!r}, "wait"):
            print("held", flush=True)
            time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError) as info, held_exclusively("sweep", "quickstart", where, "Wait for it."):
            pass
        message = str(info.value)
        assert message.startswith(f"sweep 'quickstart' is already running on this machine (process {holder.pid} on ")
        assert f"its files are at {where}): two processes would corrupt one run. Wait for it." in message
        with held_exclusively("sweep", "other", str(tmp_path / "sweeps" / "other"), "wait"):
            pass  # distinct names never collide
        with held_exclusively("train", "quickstart", where, "wait"):
            pass  # nor kinds
    finally:
        holder.kill()
        holder.wait()
    deadline = time.monotonic() + 10
    while True:  # the holder died without releasing: its lock went with it
        try:
            with held_exclusively("sweep", "quickstart", where, "wait"):
                break
        except ConfigError:
            assert time.monotonic() < deadline
            time.sleep(0.2)


def test_address_option_joins_the_given_cluster(monkeypatch):
    from microdit.cli.main import main

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert main(["--address", "auto", "model", "--size", "MicroDiT_Nano_2"]) == 0
    assert os.environ["RAY_ADDRESS"] == "auto"  # connect_ray joins instead of starting its own


@pytest.mark.ray
def test_two_sweeps_20_s_apart_and_a_training_run_on_one_machine_all_finish(tiny_demo, tmp_path):
    """The issue's scenario, as a user runs it: ``microdit sweep`` in one terminal, 20 s later a second
    sweep and a ``microdit train`` in two more, every one on its own local Ray instance, one shared
    storage root and its one fresh MLflow SQLite store. Before: the first sweep lost its trials ("its
    placement group was removed"), tracebacks of Train's placement-group cleaner filled both consoles,
    and the second died creating the store (alembic "Online migration expected to match one row")."""
    import yaml

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "sweep"))
    from sweep_testing import tiny_spec

    root = tmp_path / "root"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_TMPDIR", "MLFLOW_TRACKING_URI")}
    env["MICRODIT_ROOT"] = str(root)

    def command(name: str, *argv: str) -> tuple[subprocess.Popen, object]:
        console = (tmp_path / f"{name}.log").open("w")
        return subprocess.Popen([sys.executable, "-m", "microdit", *argv], stdout=console,
                                stderr=subprocess.STDOUT, env=env), console

    def sweep_file(name: str, ratio: float) -> str:
        spec = tiny_spec(tiny_demo, tmp_path, name)
        del spec["mlflow_uri"], spec["storage_path"]  # the shared root's defaults
        spec["space"] = {"phases[0].mask_ratio": {"grid": [ratio]}}  # one trial each
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(spec))
        return str(path)

    phase = "[{name: only, resolution: 32, mask_ratio: 0.5, steps: 3, batch_size: 8, lr: 1.0e-3}]"
    train_args = ["train", "demo", "--no-progress", "--set", "name=side", "--set", "model.size=MicroDiT_Nano_4",
                  "--set", f"data.real={tiny_demo['demo_real']}", "--set", f"data.synthetic={tiny_demo['demo_synthetic']}",
                  "--set", "data.shuffle_buffer=16", "--set", f"phases={phase}", "--set", "resources.num_workers=1",
                  "--set", "tracking.sample_grid=false"]
    first = command("first", "sweep", sweep_file("first", 0.0))
    time.sleep(20)
    others = [command("second", "sweep", sweep_file("second", 0.5)), command("side", *train_args)]
    codes = {}
    for name, (process, console) in zip(("first", "second", "side"), [first, *others]):
        codes[name] = process.wait(timeout=900)
        console.close()
    consoles = {name: (tmp_path / f"{name}.log").read_text() for name in codes}
    for name, text in consoles.items():
        assert codes[name] == 0, f"{name}:\n{text[-4000:]}"
        assert "Traceback" not in text and "Found multiple active Ray instances" not in text, f"{name}:\n{text}"
    addresses = {name: next(line for line in text.splitlines() if line.startswith("Ray: a private local instance"))
                 for name, text in consoles.items()}
    assert len(set(addresses.values())) == 3  # three instances, one per command
    for name in ("first", "second"):
        assert f"sweep {name}: 1 finished, 0 stopped early, 0 failed" in consoles[name]
    assert "run side: 3 steps, 24 images" in consoles["side"]

    for name in ("first", "second"):  # both sweeps, read back from the one shared store
        compared = subprocess.run([sys.executable, "-m", "microdit", "compare", name], capture_output=True,
                                  text=True, env=env, timeout=120)
        assert compared.returncode == 0, compared.stderr
        assert f"sweep {name}: 1 trials — 1 finished, 0 stopped early, 0 failed" in compared.stdout
