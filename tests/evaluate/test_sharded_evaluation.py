"""In-training evaluation split over 2 ranks equals one process: same images, same FID (1e-6).

Two CPU processes on gloo (the same code runs on NCCL ranks of a Train run) each generate their
contiguous share of 7 samples (4 + 3) in batches of 2 and extract Inception features; the float64
moments are all-reduced. A single process generates all 7 in batches of 3. Per-sample seeded noise
makes the images independent of the batch and of the split, so the merged statistics, the FID and
its resampled std match the single process. A fresh copy of the reference set (no statistics
cache) also exercises "rank 0 builds the cache, the others read it".
"""

from __future__ import annotations

import shutil
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
from eval_testing import write_pixel_set

SAMPLES, WORLD = 7, 2


def _model():
    from microdit.model import MicroDiT
    from microdit.model.sizes import model_config

    torch.manual_seed(0)
    return MicroDiT(model_config("MicroDiT_Nano_4", caption_dim=32, latent_channels=3)).eval()


def _evaluate(reference: str, batch_size: int, rank: int = 0, world: int = 1, grid: str | None = None) -> dict:
    from microdit.evaluate.pipeline import EvaluationConfig, evaluate_model

    config = EvaluationConfig(reference=reference, num_samples=SAMPLES, steps=2, guidance=2.0, seed=3,
                              batch_size=batch_size, bootstrap=16)
    return evaluate_model(_model(), config, grid_path=grid, rank=rank, world=world)


def _worker(rank: int, world: int, rendezvous: str, reference: str, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    # a collective left waiting (a rank skipped it) fails after a minute instead of hanging the suite
    dist.init_process_group("gloo", init_method=rendezvous, rank=rank, world_size=world, timeout=timedelta(seconds=60))
    try:
        metrics = _evaluate(reference, batch_size=2, rank=rank, world=world, grid=str(Path(out_dir) / "grid.png"))
    finally:
        dist.destroy_process_group()
    torch.save(metrics, Path(out_dir) / f"rank{rank}.pt")


def test_two_ranks_give_the_single_process_fid(tmp_path):
    import torch.multiprocessing as mp

    from microdit.evaluate.generate import LatentDecoder, generate

    single_set = write_pixel_set(tmp_path / "set")
    single = _evaluate(str(single_set), batch_size=3)

    # the images themselves: samples 4..6 made alone (in batches of 2) equal those of the full run
    text = torch.randn(SAMPLES, 4, 32, generator=torch.Generator().manual_seed(1))
    decoder = LatentDecoder({"kind": "pixels"})
    whole = generate(_model(), text, decoder, 16, steps=2, guidance=2.0, seed=3, batch_size=3)
    tail = generate(_model(), text[4:], decoder, 16, steps=2, guidance=2.0, seed=3, batch_size=2, first_index=4)
    assert np.abs(whole[4:].astype(int) - tail.astype(int)).max() <= 1
    assert np.abs(whole[:3].astype(int) - whole[3:6].astype(int)).max() > 10  # samples do differ

    sharded_set = tmp_path / "copy"
    shutil.copytree(single_set, sharded_set, ignore=shutil.ignore_patterns("fid_cache"))
    context = mp.spawn(_worker, args=(WORLD, f"file://{tmp_path / 'rendezvous'}", str(sharded_set), str(tmp_path)),
                       nprocs=WORLD, join=False)
    deadline = time.monotonic() + 180
    while not context.join(timeout=2):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.terminate()
            pytest.fail("sharded evaluation did not finish within 180 s")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]

    name = f"fid_{SAMPLES}"
    assert single[name] > 0
    for metrics in ranks:  # every rank returns the merged result
        assert metrics[name] == pytest.approx(single[name], rel=1e-6, abs=1e-6)
        assert metrics[f"{name}_std"] == pytest.approx(single[f"{name}_std"], rel=1e-6, abs=1e-6)
        assert metrics[f"{name}_ci_low"] == pytest.approx(single[f"{name}_ci_low"], rel=1e-6, abs=1e-6)
    assert sorted(p.name for p in (sharded_set / "fid_cache").iterdir()) == \
        sorted(p.name for p in (single_set / "fid_cache").iterdir())  # one cache, built once by rank 0
    assert (tmp_path / "grid.png").is_file()  # rank 0 drew the grid from both ranks' first images
