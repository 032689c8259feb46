"""Joining a Ray cluster so that every node runs this code with these settings.

``connect_ray`` joins the cluster in ``RAY_ADDRESS`` (set inside ``ray job submit``, or by
``microdit --address auto|HOST:PORT``) or starts a local one bound to 127.0.0.1, with a job-level
runtime environment that ships the ``microdit``
package (``py_modules``: workers on other nodes import this copy, not whatever is installed
there, and need no editable install) and the settings (``env_vars``: storage root, data root,
tracking URI, object-store endpoint and region). Credentials are not shipped: nodes get them
from their own environment (instance roles, ``~/.aws``) or from the submit line's runtime env.
Inside a submitted job Ray merges this runtime env with the job's and refuses a field or
variable given twice, so whatever the submit line already sets is left out here.

A local instance is private to the command that started it, so two commands at once on one
machine (two sweeps, a sweep and ``microdit train``) never see each other's cluster. Ray resolves
"the" local cluster implicitly in places we do not call (Train V2's placement-group cleaner and the
state API in workers, ``ray.util.state`` in the driver): from ``RAY_ADDRESS``, else from the
``ray_current_cluster`` file of the Ray temp dir, which the *latest* instance on the machine
overwrites (one run's cleaner then watched another run's cluster, found its controller missing and
removed live placement groups; with two instances and no such file they raised "Found multiple
active Ray instances"). So the GCS port of a local instance is chosen before ``ray.init``, the job's
runtime env hands every worker ``RAY_ADDRESS`` for it, the driver exports the same right after
``ray.init``, and the instance gets its own temp dir (``RAY_TMPDIR``: its sessions and logs apart
from every other run's).

``check_tracking_fits_cluster`` refuses a file-based MLflow store once the cluster has more than
one node: a worker on another node would open its own empty SQLite file at the same path and
its metrics would vanish (SPEC §8).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from microdit.errors import ConfigError
from microdit.storage import ROOT_ENV, root

log = logging.getLogger(__name__)
SHIPPED_ENV = ("MICRODIT_ROOT", "MICRODIT_DATA_ROOT", "MICRODIT_VERBOSITY", "MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL",
               "AWS_DEFAULT_REGION", "AWS_REGION", "MLFLOW_S3_ENDPOINT_URL")
PACKAGE_DIR = str(Path(__file__).resolve().parent)  # platform/microdit (or site-packages/microdit)
SHIP_PACKAGE_ENV = "MICRODIT_SHIP_PACKAGE"  # "0": rely on the package installed on every node


def job_runtime_env() -> dict[str, Any]:
    """The runtime env of the submitted job this driver runs in ({} outside ``ray job submit``)."""
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not raw:
        return {}
    try:
        return json.loads(raw).get("runtime_env") or {}
    except ValueError:
        return {}


def runtime_env() -> dict[str, Any]:
    """``py_modules`` with this package + the settings as ``env_vars``, minus what the job sets."""
    job = job_runtime_env()
    env: dict[str, Any] = {}
    if os.environ.get(SHIP_PACKAGE_ENV, "1") != "0" and "py_modules" not in job:
        env["py_modules"] = [PACKAGE_DIR]
    job_vars = job.get("env_vars") or {}
    env_vars = {k: os.environ[k] for k in SHIPPED_ENV if os.environ.get(k) and k not in job_vars}
    if ROOT_ENV not in job_vars:  # the root as this driver resolved it (``~`` is not every node's home)
        env_vars[ROOT_ENV] = root()
    if env_vars:
        env["env_vars"] = env_vars
    return env


_STARTED: dict[str, str] = {}  # RAY_ADDRESS / RAY_TMPDIR as they were before this process started its instance


def connect_ray() -> None:
    """Join the cluster in RAY_ADDRESS, or start a private local one bound to 127.0.0.1 (module docstring)."""
    import ray

    if ray.is_initialized():
        return
    if _STARTED and os.environ.get("RAY_ADDRESS") == _STARTED.get("address"):
        _forget_local_instance()  # our own earlier instance, shut down since: start a new one, not join a dead one
    # Small or busy machines start a 2-worker group in more than Ray's default 60 s.
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "300")
    from microdit.console import quiet_ray_data, ray_init_kwargs

    env = runtime_env()
    if os.environ.get("RAY_ADDRESS"):
        ray.init(runtime_env=env or None, **ray_init_kwargs())
    else:  # a fresh one, never whatever cluster an address file of an earlier session points at
        # One loopback node is never drained by a cloud provider, and Train's preemption watcher actor
        # costs a C++ error line per Train run (its arguments sit in the object store, ray#53727).
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")  # inherited by every local worker
        _STARTED.update(ray_address=os.environ.get("RAY_ADDRESS", ""), ray_tmpdir=os.environ.get("RAY_TMPDIR", ""))
        os.environ["RAY_TMPDIR"] = private_ray_tmpdir()
        _start_local_instance(env, ray_init_kwargs())
        log.info("Ray: a private local instance at %s; its logs: %s", _STARTED["address"],
                 os.path.join(os.environ["RAY_TMPDIR"], "ray", "session_latest", "logs"))
    quiet_ray_data()


def _start_local_instance(env: dict[str, Any], init_kwargs: dict[str, Any], attempts: int = 3) -> None:
    """``ray.init`` a head on loopback whose GCS port is chosen first, so the job's runtime env can
    hand every worker ``RAY_ADDRESS`` (a port taken by another process in between: try another)."""
    import ray

    for attempt in range(attempts):
        port = _free_port()
        address = f"127.0.0.1:{port}"
        job_env = {**env, "env_vars": {**env.get("env_vars", {}), "RAY_ADDRESS": address}}
        os.environ["RAY_GCS_SERVER_PORT"] = str(port)  # read by the head node Ray starts
        try:
            ray.init(address="local", _node_ip_address="127.0.0.1", dashboard_host="127.0.0.1",
                     include_dashboard=True, runtime_env=job_env, **init_kwargs)
            break
        except (ConnectionError, RuntimeError):
            if attempt == attempts - 1:
                raise
            ray.shutdown()
        finally:
            os.environ.pop("RAY_GCS_SERVER_PORT", None)
    _STARTED["address"] = os.environ["RAY_ADDRESS"] = address


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def private_ray_tmpdir() -> str:
    """A new directory for one local Ray instance, under the system temp dir (short: Ray's socket
    paths live inside it and Unix limits them to 107 characters)."""
    import tempfile

    base = _STARTED.get("ray_tmpdir") or ("/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir())
    return tempfile.mkdtemp(prefix="microdit-ray-", dir=base)


def _forget_local_instance() -> None:
    """Undo what starting our local instance exported (it is gone; the next connect starts anew)."""
    for key, name in (("ray_address", "RAY_ADDRESS"), ("ray_tmpdir", "RAY_TMPDIR")):
        if _STARTED.get(key):
            os.environ[name] = _STARTED[key]
        else:
            os.environ.pop(name, None)
    _STARTED.clear()


def alive_nodes() -> int:
    """How many nodes of the connected cluster are alive (1 when Ray is not initialised)."""
    import ray

    if not ray.is_initialized():
        return 1
    return sum(1 for node in ray.nodes() if node.get("Alive"))


def is_file_store(uri: str) -> bool:
    """True for MLflow stores that live in one machine's files (SQLite, ``file:``, plain paths);
    servers (``http(s)://``, ``postgresql://`` …) and Databricks are shared by every node."""
    if uri.startswith("databricks"):
        return False
    return uri.startswith(("sqlite:", "file:")) or "://" not in uri


def check_tracking_fits_cluster(uri: str) -> None:
    """Refuse a file-based MLflow store when the cluster has more than one alive node."""
    nodes = alive_nodes()
    if nodes > 1 and is_file_store(uri):
        raise ConfigError(
            f"tracking: the MLflow store {uri!r} lives in one machine's files, but the Ray cluster has {nodes} "
            "nodes: workers on other nodes would log into their own empty copy and their metrics would be lost. "
            "Start a tracking server (e.g. `mlflow server --host 0.0.0.0 --port 5000 --backend-store-uri "
            "sqlite:///mlflow.db --artifacts-destination <root>/mlartifacts`) and set "
            "MLFLOW_TRACKING_URI=http://<server>:5000 (or tracking.mlflow_uri / --mlflow-uri)"
        )


def worker_package_location() -> str:
    """Where this process imported ``microdit`` from (recorded by rank 0: which code ran)."""
    return PACKAGE_DIR
