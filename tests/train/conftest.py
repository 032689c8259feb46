"""Fixtures for the training tests: tiny demo sets, a tiny recipe builder, MLflow look-ups.

Runs use the session's real local Ray cluster (2 CPUs): 2 workers x 0.5 CPU leave one CPU for
the Ray Data read tasks. The recipes point at the demo sets by absolute path, so Ray workers
(started before any ``MICRODIT_DATA_ROOT`` change) resolve them exactly as the driver does.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from train_testing import BATCH, STEPS


@pytest.fixture(scope="session")
def train_demo(ray_local, tmp_path_factory) -> dict[str, Path]:
    """The tiny demo sets (48 real + 16 held-out + 48 synthetic rows at 32 px, 8 rows per shard)."""
    from microdit.data.demo import ensure_demo_sets

    return ensure_demo_sets(tmp_path_factory.mktemp("train-demo"), resolution=32, size="tiny")


@pytest.fixture
def make_recipe(train_demo, tmp_path, monkeypatch) -> Callable[..., Any]:
    """``make_recipe(name, **overrides)``: the demo recipe cut to one tiny phase on 2 CPU workers."""
    from microdit.config.recipe import load_recipe

    monkeypatch.setenv("MICRODIT_DATA_ROOT", str(train_demo["demo_real"].parent))

    def build(name: str, overrides: dict[str, Any] | None = None, root: Path | None = None):
        root = root or tmp_path
        phase = {
            "name": "masked",
            "resolution": 32,
            "mask_ratio": 0.5,
            "steps": STEPS,
            "batch_size": BATCH,
            "lr": 1.0e-3,
            "lr_schedule": "cosine",
            "warmup_steps": 2,
            "grad_clip": 1.0,
        }
        base = {
            "name": name,
            "model": {"size": "MicroDiT_Nano_4"},
            "phases": [phase],
            "data.real": str(train_demo["demo_real"]),
            "data.synthetic": str(train_demo["demo_synthetic"]),
            "data.shuffle_buffer": 16,
            "resources.num_workers": 2,
            "resources.cpus_per_worker": 0.5,
            "tracking.mlflow_uri": f"sqlite:///{root / 'mlflow.db'}",
            "tracking.storage_path": str(root / "runs"),
            "tracking.experiment": "test-train",
            "tracking.log_every_steps": 2,
            "tracking.checkpoint_every_steps": 2,
            "tracking.keep_checkpoints": 2,
            "tracking.max_failures": 0,
        }
        return load_recipe("demo", {**base, **(overrides or {})})

    return build
