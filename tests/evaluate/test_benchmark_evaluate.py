"""The evaluation benchmark runs end to end and reports its figures. 4 + 2 Inception images."""

from __future__ import annotations

import json

from microdit.benchmarks.evaluate import main


def test_benchmark_prints_one_json_line(capsys):
    assert main(["--num-images", "4", "--batch-size", "2", "--resolution", "16"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["benchmark"] == "evaluate" and result["num_images"] == 4
    assert result["inception_images_per_s"] > 0
    assert abs(result["inception_s_per_image"] * result["inception_images_per_s"] - 1) < 0.01
    assert result["frechet_distance_s"] > 0
