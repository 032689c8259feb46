"""The GPU benchmark's code path, run on CPU with a tiny size (the real run needs a GPU).

A GPU session has one short call to run ``python jobs/benchmark.py gpu``: this smoke test makes
sure that call cannot die on a wiring error (row parsing, the memory prediction, compile, the
FID sampling stages and the JSON record) before it reaches the device.
"""

from __future__ import annotations

import json

import pytest
import torch

from microdit.benchmarks.gpu import main, memory_fraction, parse_args
from microdit.model.memory import GIB, H100_80GB_BYTES, estimate_memory
from microdit.model.sizes import model_config


def test_benchmark_runs_every_stage_on_cpu(tmp_path, capsys):
    out = tmp_path / "gpu.json"
    argv = ["--device", "cpu", "--size", "MicroDiT_Nano_2", "--rows", "64:0.75:4,64:0:2", "--steps", "1",
            "--warmup", "1", "--eager", "--no-compile", "--fid-samples", "4", "--fid-resolution", "32",
            "--fid-steps", "2", "--fid-batch", "2", "--decode-batch", "2", "--json", str(out)]
    assert main(argv) == 0
    record = json.loads(out.read_text())
    rows = record["rows"]
    assert [(r["resolution"], r["mask_ratio"], r["micro_batch"], r["mode"]) for r in rows] == [
        (64, 0.75, 4, "eager"), (64, 0.0, 2, "eager")]
    cfg = model_config("MicroDiT_Nano_2")
    for r in rows:
        assert r["images_per_s"] == pytest.approx(r["micro_batch"] / r["seconds_per_step"], rel=0.01)
        expected = estimate_memory(cfg, 8, r["mask_ratio"], r["micro_batch"], world_size=1,
                                   low_precision_norms=True).total / GIB
        assert r["predicted_gib"] == pytest.approx(expected, abs=0.01)
    fid = record["fid"]
    assert fid["samples"] == 4 and fid["generate_images_per_s"] > 0 and fid["features_images_per_s"] > 0
    assert fid["decode_images_per_s"] > 0  # diffusers is installed here: the SDXL-architecture VAE ran
    stages = [fid[k] for k in ("generate_images_per_s", "decode_images_per_s", "features_images_per_s")]
    assert fid["total_images_per_s"] == pytest.approx(1 / sum(1 / s for s in stages), rel=0.05)  # rounded stages
    assert "MFU989" in capsys.readouterr().out


def test_time_budget_skips_rows_instead_of_overrunning(tmp_path):
    out = tmp_path / "gpu.json"
    assert main(["--device", "cpu", "--size", "MicroDiT_Nano_2", "--rows", "64:0.75:2", "--eager", "--no-compile",
                 "--fid-samples", "2", "--time-budget-s", "0", "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["rows"][0]["note"] == "skipped: time budget spent" and record["rows"][0]["images_per_s"] is None
    assert record["fid"] == {"note": "skipped: time budget spent"}


def test_memory_cap_is_the_memory_models_h100_capacity():
    """The default cap is the memory model's 81,559 MiB (not 80e9 bytes = 74.5 GiB, which called
    rows that fit an H100 "out of memory"), applied as a fraction of whatever card runs it."""
    default = parse_args([]).memory_cap_gib * GIB
    assert default == H100_80GB_BYTES == 81_559 * 2**20
    h200 = 143_771 * 2**20  # a larger card: the fraction leaves exactly the H100's bytes
    assert memory_fraction(default, h200) * h200 == pytest.approx(H100_80GB_BYTES, abs=1)
    assert memory_fraction(default, H100_80GB_BYTES) is None  # the H100 itself: no cap needed
    assert memory_fraction(0, h200) is None  # --memory-cap-gib 0: none


def test_checkpointed_rows_with_a_pinned_backend_run(tmp_path):
    """Activation checkpointing with a pinned attention backend (math on CPU) trains: before, the
    recompute in backward ran outside the pin and the first backward raised CheckpointError."""
    out = tmp_path / "gpu.json"
    assert main(["--device", "cpu", "--size", "MicroDiT_Nano_2", "--rows", "64:0.75:2", "--steps", "1", "--warmup",
                 "1", "--eager", "--no-compile", "--fid-samples", "0", "--activation-checkpointing",
                 "--attention-kernel", "math", "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["images_per_s"] > 0 and row["note"] == ""


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_official_masked_micro_batch_fits_80gb(tmp_path):
    out = tmp_path / "gpu.json"
    assert main(["--rows", "256:0.75:256", "--steps", "3", "--fid-samples", "0", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["rows"][0]["peak_gib"] is not None
