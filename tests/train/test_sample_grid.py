"""Phase-end sample grids read a bounded number of rows (issue 12): 16 fixed captions from the first
row groups, never a scan of the training set (at the paper's scale, terabytes into rank 0)."""

from __future__ import annotations

import shutil

import pytest
import torch


def test_sample_grid_reads_only_the_first_rows(train_demo, tmp_path):
    from microdit.config.recipe import load_recipe
    from microdit.data.manifest import load_manifest
    from microdit.data.reader import read_set
    from microdit.model import MicroDiT
    from microdit.train.evaluation import GRID_SAMPLES, sample_grid

    copy = tmp_path / "demo_real"
    shutil.copytree(train_demo["demo_real"], copy)
    shards = load_manifest(copy).data_shards()
    assert len(shards) > 3 and sum(s["rows"] for s in shards[:2]) == GRID_SAMPLES  # 8 rows per shard
    for shard in shards[2:]:  # anything past the first 16 rows is unreadable: a full scan would fail
        (copy / shard["file"]).write_bytes(b"not parquet")
    with pytest.raises(Exception):  # noqa: B017 - pyarrow's error type for a corrupt file
        read_set(copy, ["caption"])

    first = read_set(copy, ["text_emb", "caption"], max_rows=GRID_SAMPLES)
    assert len(first["caption"]) == GRID_SAMPLES and first["text_emb"].shape[0] == GRID_SAMPLES
    assert read_set(copy, ["caption"], max_rows=5)["caption"] == first["caption"][:5]

    recipe = load_recipe("demo", {"data.real": str(copy), "data.synthetic": str(train_demo["demo_synthetic"]),
                                  "tracking.sample_steps": 2})
    torch.manual_seed(0)
    model = MicroDiT(recipe.architecture(caption_dim=384, latent_channels=3)).eval()
    path = sample_grid(recipe, model, tmp_path / "grid.png")
    assert path.exists() and path.stat().st_size > 1000
