"""Fixtures for the training tests: the tiny demo sets and one uninterrupted baseline run.

Runs use the session's real local Ray cluster (2 CPUs): 2 workers x 0.5 CPU leave one CPU for
the Ray Data read tasks. The recipes point at the demo sets by absolute path, so Ray workers
(started before any ``MICRODIT_DATA_ROOT`` change) resolve them exactly as the driver does;
the variable is set too, for anything that resolves bare set names in the driver.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from train_testing import Baseline, tiny_recipe


@pytest.fixture(scope="session")
def train_demo(ray_local, tmp_path_factory) -> dict[str, Path]:
    """The tiny demo sets (48 real + 16 held-out + 48 synthetic rows at 32 px, 8 rows per shard)."""
    from microdit.data.demo import ensure_demo_sets

    sets = ensure_demo_sets(tmp_path_factory.mktemp("train-demo"), resolution=32, size="tiny")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MICRODIT_DATA_ROOT", os.path.dirname(sets["demo_real"]))
        yield sets


@pytest.fixture(scope="session")
def baseline(train_demo, tmp_path_factory) -> Baseline:
    """One uninterrupted 2-worker run of the tiny recipe, recording the row ids each rank consumed
    (and what its progress view prints to a file-like stdout)."""
    import contextlib
    import io

    from microdit.train.trainer import run_training

    root = tmp_path_factory.mktemp("baseline")
    recipe = tiny_recipe(train_demo, root, "baseline", {"debug": {"record_ids_dir": str(root / "ids")}})
    console = io.StringIO()
    with contextlib.redirect_stdout(console):
        summary = run_training(recipe, progress=True)
    return Baseline(recipe=recipe, summary=summary, ids_dir=root / "ids", root=root, console=console.getvalue())
