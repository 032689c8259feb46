"""In-training evaluation split over 2 ranks equals one process: same images, same FID (1e-6).

Two CPU processes on gloo (the same code runs on NCCL ranks of a Train run) each generate their
contiguous share of 7 samples (4 + 3) in batches of 2 and extract Inception features; the float64
moments are all-reduced. A single process generates all 7 in batches of 3. Per-sample seeded noise
makes the images independent of the batch and of the split, so the merged statistics, the FID and
its resampled std match the single process. A fresh copy of the reference set (no statistics
cache) also exercises the sharded reference pass: each rank decodes and featurises its half of
the 8 reference images on its own device, the moments are summed and rank 0 writes the one cache;
a second evaluation then reads it on both ranks. A spy around the real
``InceptionFeatureExtractor.__call__`` records what each rank featurised.
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


def _evaluate(reference: str, batch_size: int, rank: int = 0, world: int = 1, grid: str | None = None,
              device: torch.device | None = None, bootstrap: int = 16) -> dict:
    from microdit.evaluate.pipeline import EvaluationConfig, evaluate_model

    config = EvaluationConfig(reference=reference, num_samples=SAMPLES, steps=2, guidance=2.0, seed=3,
                              batch_size=batch_size, bootstrap=bootstrap)
    return evaluate_model(_model(), config, grid_path=grid, rank=rank, world=world, device=device)


def _worker(rank: int, world: int, rendezvous: str, reference: str, out_dir: str) -> None:
    import torch.distributed as dist

    from microdit.evaluate.inception import InceptionFeatureExtractor

    seen: list[tuple[str, np.ndarray, np.ndarray]] = []  # per call: device, images (B, H, W, 3), features (B, 2048)
    real_call = InceptionFeatureExtractor.__call__

    def spy(self, images):
        features = real_call(self, images)
        seen.append((str(self.device), np.array(images), features))
        return features

    InceptionFeatureExtractor.__call__ = spy  # this spawned process only
    torch.set_num_threads(1)
    # a collective left waiting (a rank skipped it) fails after a minute instead of hanging the suite
    dist.init_process_group("gloo", init_method=rendezvous, rank=rank, world_size=world, timeout=timedelta(seconds=60))
    try:
        # "cpu:<rank>" computes on the CPU but is not the default device: it shows what the rank was given
        device = torch.device("cpu", rank)
        metrics = _evaluate(reference, batch_size=2, rank=rank, world=world, grid=str(Path(out_dir) / "grid.png"),
                            device=device)
        first = len(seen)
        _evaluate(reference, batch_size=4, rank=rank, world=world, device=device, bootstrap=0)  # the next: a hit
    finally:
        dist.destroy_process_group()
    torch.save(metrics, Path(out_dir) / f"rank{rank}.pt")
    torch.save({"first": seen[:first], "second": seen[first:]}, Path(out_dir) / f"seen{rank}.pt")


def test_two_ranks_give_the_single_process_fid(tmp_path):
    import torch.multiprocessing as mp

    from microdit.data.reader import read_set
    from microdit.evaluate.fid import FeatureStats
    from microdit.evaluate.generate import LatentDecoder, generate, to_uint8
    from microdit.evaluate.sharded import shard_range

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
        sorted(p.name for p in (single_set / "fid_cache").iterdir())  # one cache, written once by rank 0
    assert (tmp_path / "grid.png").is_file()  # rank 0 drew the grid from both ranks' first images

    # the reference pass was split: each rank featurised its own half of the 8 decoded reference images
    reference = to_uint8(torch.from_numpy(read_set(sharded_set, ["latents"])["latents"].astype(np.float32)))
    reference_features = []
    for rank in range(WORLD):
        recorded = torch.load(tmp_path / f"seen{rank}.pt", weights_only=False)
        seen = recorded["first"]
        images = np.concatenate([batch for _, batch, _ in seen])  # (n, 16, 16, 3) uint8, in call order
        is_reference = [any(np.array_equal(im, real) for real in reference) for im in images]
        featurised = [i for i in range(len(reference)) if any(np.array_equal(reference[i], im) for im in images)]
        assert featurised == list(shard_range(len(reference), rank, WORLD)), rank
        assert len(images) == len(featurised) + len(shard_range(SAMPLES, rank, WORLD))  # + its samples only
        assert {device for device, _, _ in seen} == {f"cpu:{rank}"}  # every Inception call on the rank's device
        reference_features.append(np.concatenate([features for _, _, features in seen])[is_reference])
        # the second evaluation read the cache on every rank: its own samples only, in one batch
        assert [len(batch) for _, batch, _ in recorded["second"]] == [len(shard_range(SAMPLES, rank, WORLD))]
    (cache,) = (sharded_set / "fid_cache").glob("*.npz")  # exactly one cache entry
    merged, whole = FeatureStats.load(cache), FeatureStats.from_features(np.concatenate(reference_features))
    assert merged.count == whole.count == len(reference)
    np.testing.assert_allclose(merged.sum, whole.sum, rtol=1e-9)  # the merge is exact: float64 moments add
    np.testing.assert_allclose(merged.outer_sum, whole.outer_sum, rtol=1e-9, atol=1e-12)
