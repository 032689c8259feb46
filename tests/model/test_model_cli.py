"""`microdit model` and the `jobs/benchmark.py` dispatcher."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from microdit.cli.main import main

REPO = Path(__file__).resolve().parents[2]


def test_xl_dry_run_prints_the_official_parameter_count(capsys):
    assert main(["model", "--size", "MicroDiT_XL_2", "--describe"]) == 0
    out = capsys.readouterr().out
    assert "1,165,442,320" in out
    assert "712,457,488" in out  # active per token
    assert "at 256 px (32x32 latent, 256 tokens), mask ratio 0.75 (64 tokens reach the backbone)" in out
    assert "training (3x forward)  282.30" in out
    assert "training at ratio 0    714.41" in out


def test_resolution_latent_size_overrides_and_mask_ratio(capsys):
    argv = ["model", "--size", "MicroDiT_Micro_2", "--resolution", "512", "--mask-ratio", "0.5"]
    assert (
        main([*argv, "--set", "caption_dim=1024", "--set", "qkv_ratio_range=[0.25, 1.0]", "--describe"]) == 0
    )
    out = capsys.readouterr().out
    assert "64x64 latent, 1024 tokens), mask ratio 0.5 (512 tokens" in out
    assert "caption_dim            1024" in out and "qkv_ratio_range        [0.25, 1.0]" in out
    assert main(["model", "--size", "MicroDiT_Nano_2", "--latent-size", "16", "--mask-ratio", "0"]) == 0
    out = capsys.readouterr().out
    assert "(16x16 latent, 64 tokens), mask ratio 0 (64 tokens" in out and "ratio 0    " not in out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--size", "MicroDiT_Nano_2", "--set", "width=100"], "model.width=100"),
        (["--size", "MicroDiT_Nope"], "model.size='MicroDiT_Nope'"),
        (["--size", "MicroDiT_Nano_2", "--resolution", "250"], "--resolution=250"),
        (["--size", "MicroDiT_Nano_2", "--latent-size", "33"], "model.patch_size=2"),
        (["--size", "MicroDiT_Nano_2", "--mask-ratio", "1.5"], "--mask-ratio=1.5"),
        (["--size", "MicroDiT_Nano_2", "--set", "widht=3"], "model.widht: unknown key; allowed: caption_dim, "),
        (["--size", "MicroDiT_Nano_2", "--set", "width"], "expected FIELD=VALUE"),
    ],
)
def test_errors_print_one_line_and_exit_2(argv, message, capsys):
    assert main(["model", *argv, "--describe"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("microdit model: error: ") and message in err
    assert err.count("\n") == 1


def test_benchmark_dispatcher_reports_unknown_and_missing_benchmarks():
    script = str(REPO / "jobs" / "benchmark.py")
    run = subprocess.run([sys.executable, script, "nope"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "unknown benchmark 'nope'" in run.stderr
    run = subprocess.run(
        [sys.executable, script, "model", "--help"], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0 and "--batch" in run.stdout
