"""Shared fixtures: one real local Ray cluster per test session, bound to 127.0.0.1 only."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
# OpenMP threads that spin while waiting fight Ray's processes on 2 cores (2-7x slower tests).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "300")
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray cluster (2 logical CPUs, loopback only) shared by the whole test session."""
    import ray

    if not ray.is_initialized():
        ray.init(
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
