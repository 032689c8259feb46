"""Shared fixtures: one real local Ray cluster per test session, bound to 127.0.0.1 only."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from net_testing import free_port, wait_for_port

# The local S3-compatible server (``s3_bucket``) listens on this port. The variables are set before
# any Ray cluster starts, so Ray workers inherit them as they would on a configured node.
S3_PORT = free_port()
os.environ.setdefault("AWS_ENDPOINT_URL", f"http://127.0.0.1:{S3_PORT}")
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
# OpenMP threads that spin while waiting fight Ray's processes on 2 cores (2-7x slower tests).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "300")
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
# as a microdit command's own local instance does (cluster.connect_ray): no preemption watcher on loopback
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray cluster (2 logical CPUs, loopback only) shared by the whole test session."""
    import ray

    if not ray.is_initialized():
        ray.init(
            address="local",  # a new cluster, never one a test (or a stale address file) left behind
            num_cpus=2,
            include_dashboard=True,  # Train V2's placement-group cleaner needs the state API
            dashboard_host="127.0.0.1",
            _node_ip_address="127.0.0.1",
            log_to_driver=False,
            configure_logging=False,
        )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_demo(ray_local, tmp_path_factory):
    """``ensure_demo_sets(size="tiny")``: 48 real + 16 held-out + 48 synthetic rows at 32 px, 8 per shard.

    Built once per test session on the shared cluster; refer to the sets by these absolute paths
    (Ray workers do not see a MICRODIT_DATA_ROOT set after the cluster started).
    """
    from microdit.data.demo import ensure_demo_sets

    return ensure_demo_sets(tmp_path_factory.mktemp("demo"), resolution=32, size="tiny")


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible server (moto, ``tests/s3_server.py``) on 127.0.0.1 at ``$AWS_ENDPOINT_URL``, for the session."""
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    port = int(endpoint.rsplit(":", 1)[1])
    script = os.path.join(os.path.dirname(__file__), "s3_server.py")
    proc = subprocess.Popen([sys.executable, script, str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc, "moto server", timeout=60)
    except RuntimeError:
        proc.kill()
        raise
    yield endpoint
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture
def s3_bucket(s3_server, request):
    """A fresh bucket on the local S3 server: its ``s3://`` URI (one per test)."""
    import pyarrow.fs as pafs

    name = "t-" + "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:50].strip("-")
    fs = pafs.S3FileSystem(endpoint_override=s3_server, allow_bucket_creation=True,
                           access_key="testing", secret_key="testing", region="us-east-1")
    fs.create_dir(name)
    return f"s3://{name}"
