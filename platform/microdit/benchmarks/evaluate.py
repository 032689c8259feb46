"""Benchmark of the evaluation path: Inception feature extraction images/s and Fréchet time.

FID-N costs N generated images plus N Inception forward passes plus one Fréchet distance;
this measures the last two on the machine at hand, so the cost of an evaluation can be
predicted (generation throughput and the FID-30K cost prediction are added beside it).

    python -m microdit.benchmarks.evaluate --num-images 64 --batch-size 16 [--ray]

Prints one JSON line. The load average is included because a shared machine's numbers are
only meaningful next to how busy it was.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from microdit.evaluate.fid import FeatureStats, fid_from_stats
from microdit.evaluate.inception import InceptionFeatureExtractor


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="microdit-benchmark-evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=64, help="images timed (after one warm-up batch)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--resolution", type=int, default=64, help="side of the uint8 input images")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--ray", action="store_true", help="also time a Ray actor pool (starts local Ray)")
    parser.add_argument("--num-actors", type=int, default=1)
    args = parser.parse_args(argv)
    if args.num_images < 2 or args.batch_size < 1 or args.resolution < 8:
        parser.error("need --num-images >= 2, --batch-size >= 1, --resolution >= 8")
    return args


def time_in_process(extractor: InceptionFeatureExtractor, images: np.ndarray) -> tuple[float, np.ndarray]:
    extractor(images[: extractor.batch_size])  # warm-up: TorchScript profiles its first calls
    start = time.perf_counter()
    features = extractor(images)  # (N, 2048)
    return len(images) / (time.perf_counter() - start), features


def time_ray(images: np.ndarray, batch_size: int, num_actors: int) -> float:
    import ray

    from microdit.evaluate.distributed import distributed_feature_stats

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1) // num_actors))
        batches = (images[i : i + batch_size] for i in range(0, len(images), batch_size))
        start = time.perf_counter()  # includes actor start and network load: the real cost
        distributed_feature_stats(
            batches, num_actors=num_actors, num_cpus_per_actor=cpus, batch_size=batch_size, total=len(images)
        )
        return len(images) / (time.perf_counter() - start)
    finally:
        if started_here:
            ray.shutdown()


def measure(args: argparse.Namespace) -> dict:
    """The figures as a dict (also printed as one JSON line by ``main``)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(args.num_images, args.resolution, args.resolution, 3), dtype=np.uint8)
    extractor = InceptionFeatureExtractor(batch_size=args.batch_size, device=args.device)
    images_per_s, features = time_in_process(extractor, images)

    half = len(features) // 2
    a, b = FeatureStats.from_features(features[:half]), FeatureStats.from_features(features[half:])
    start = time.perf_counter()
    fid_from_stats(a, b)
    frechet_s = time.perf_counter() - start

    result = {
        "benchmark": "evaluate",
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "num_images": args.num_images,
        "batch_size": args.batch_size,
        "input_resolution": args.resolution,
        "inception_images_per_s": round(images_per_s, 3),
        "inception_s_per_image": round(1 / images_per_s, 4),
        "frechet_distance_s": round(frechet_s, 3),
    }
    if args.ray:
        result["ray_images_per_s"] = round(time_ray(images, args.batch_size, args.num_actors), 3)
        result["ray_num_actors"] = args.num_actors
    return result


def main(argv: list[str] | None = None) -> int:
    print(json.dumps(measure(parse_args(argv))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
