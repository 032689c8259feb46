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
    parser.add_argument("--gen-size", default="MicroDiT_Nano_4", help="model timed for generation")
    parser.add_argument("--gen-images", type=int, default=32)
    parser.add_argument("--gen-steps", type=int, default=30)
    parser.add_argument("--gen-guidance", type=float, default=5.0)
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
    result.update(time_generation(args))
    result.update(predict_fid30k_xl())
    return result


def time_generation(args: argparse.Namespace) -> dict:
    """Images/s of the EDM sampler (Heun, CFG) with a tiny model at 32x32 pixels-as-latents."""
    from microdit.evaluate.generate import LatentDecoder, generate
    from microdit.model import MicroDiT
    from microdit.model.sizes import model_config

    torch.manual_seed(0)
    model = MicroDiT(model_config(args.gen_size)).to(args.device).eval()
    text = torch.randn(args.gen_images, 32, model.config.caption_dim)
    decoder = LatentDecoder({"kind": "pixels"})
    generate(model, text[:2], decoder, 32, steps=2, guidance=args.gen_guidance)  # warm-up
    start = time.perf_counter()
    generate(model, text, decoder, 32, steps=args.gen_steps, guidance=args.gen_guidance, batch_size=args.gen_images)
    seconds = time.perf_counter() - start
    return {"generation_model": args.gen_size, "generation_steps": args.gen_steps,
            "generation_guidance": args.gen_guidance, "generation_images_per_s": round(args.gen_images / seconds, 3)}


def predict_fid30k_xl(gpus: int = 8, mfu: float = 0.4,
                      steps: int = 30, resolution: int = 512, price: float = 3.79) -> dict:
    """FID-30K of MicroDiT_XL_2 on 8 H100s from the FLOP count: 30K images x (2*steps - 1) Heun
    evaluations x 2 (CFG) forwards at 512 px, at an assumed MFU. VAE decode and Inception are
    counted at ~1.2 TFLOP and ~12 GFLOP per image (SDXL VAE decoder at 512 px; Inception v3)."""
    from microdit.model.flops import forward_flops
    from microdit.model.sizes import model_config

    per_image = forward_flops(model_config("MicroDiT_XL_2"), resolution // 8, 0.0).forward * (2 * steps - 1) * 2
    per_image += 1.2e12 + 12e9
    seconds = 30_000 * per_image / (gpus * 989e12 * mfu)
    return {"fid30k_xl_pflop": round(30_000 * per_image / 1e15, 1), "fid30k_xl_minutes_8xh100": round(seconds / 60, 1),
            "fid30k_xl_usd_8xh100": round(seconds / 3600 * gpus * price, 2), "fid30k_assumed_mfu": mfu}


def main(argv: list[str] | None = None) -> int:
    print(json.dumps(measure(parse_args(argv))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
