"""GPU benchmark: MicroDiT training-step throughput and MFU (``python jobs/benchmark.py gpu``).

Times full training steps (EDM loss forward, backward, grad clip, AdamW) of a registry size at
a given resolution in bf16 autocast, for several mask ratios, and prints images/s and MFU
against the device's dense bf16 peak (H100: 989 TFLOP/s) from the analytic FLOP count. Needs
only torch + einops (no Ray), so it runs on a bare GPU box: PYTHONPATH=platform.
"""

from __future__ import annotations

import argparse
import time

import torch

from microdit.diffusion import EDMDenoiser, edm_loss
from microdit.model import MicroDiT
from microdit.model.flops import train_flops_per_image
from microdit.model.sizes import model_config

H100_PEAK = 989e12


def time_steps(
    model: MicroDiT,
    batch: int,
    latent: int,
    caption_len: int,
    mask_ratio: float,
    steps: int,
    warmup: int,
    compiled: bool,
) -> float:
    """Seconds per training step (median-free mean over ``steps`` after ``warmup``)."""
    device = torch.device("cuda")
    cfg = model.config
    forward_model = torch.compile(model) if compiled else model
    denoiser = EDMDenoiser(forward_model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, fused=True)
    x0 = torch.randn(batch, cfg.latent_channels, latent, latent, device=device)
    y = torch.randn(batch, caption_len, cfg.caption_dim, device=device)
    generator = torch.Generator(device=device).manual_seed(0)

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = edm_loss(
                denoiser, x0, y, p_mean=-0.6, p_std=1.2, mask_ratio=mask_ratio, generator=generator
            ).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmark gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="MicroDiT_XL_2")
    parser.add_argument("--resolution", type=int, default=256, help="pixels (latent = resolution / 8)")
    parser.add_argument("--mask-ratios", default="0.75,0.0")
    parser.add_argument("--batch", default="256,128", help="per-GPU batch per mask ratio (comma list)")
    parser.add_argument("--caption-len", type=int, default=77)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument("--peak", type=float, default=H100_PEAK)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: this benchmark needs a GPU")
        return 1
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    cfg = model_config(args.size)
    latent = args.resolution // 8
    ratios = [float(r) for r in args.mask_ratios.split(",")]
    batches = [int(b) for b in args.batch.split(",")]
    print(
        f"{torch.cuda.get_device_name()} | torch {torch.__version__} | {args.size} at {args.resolution}px "
        f"(latent {latent}), bf16 autocast, AdamW fused, caption {args.caption_len}x{cfg.caption_dim}"
    )
    print(
        f"{'mask':>5} {'batch':>6} {'mode':>8} {'s/step':>8} {'img/s':>9} {'TFLOP/s':>9} {'MFU':>6} {'mem GB':>7}"
    )
    for compiled in [False, True] if args.compile else [False]:  # all eager rows first
        for ratio, batch in zip(ratios, batches):
            torch.manual_seed(0)
            model = MicroDiT(cfg.replace(masking="deferred")).cuda()
            torch.cuda.reset_peak_memory_stats()
            try:
                seconds = time_steps(
                    model, batch, latent, args.caption_len, ratio, args.steps, args.warmup, compiled
                )
            except torch.OutOfMemoryError:
                print(f"{ratio:>5} {batch:>6} {'compile' if compiled else 'eager':>8}  out of memory")
                del model
                torch.cuda.empty_cache()
                continue
            images_per_s = batch / seconds
            flops = train_flops_per_image(cfg, latent, ratio, args.caption_len) * images_per_s
            print(
                f"{ratio:>5} {batch:>6} {'compile' if compiled else 'eager':>8} {seconds:>8.3f} {images_per_s:>9.1f} "
                f"{flops / 1e12:>9.1f} {flops / args.peak:>6.1%} {torch.cuda.max_memory_allocated() / 2**30:>7.1f}",
                flush=True,
            )
            del model
            torch.cuda.empty_cache()
    print("paper: ~380 images/s per H100 averaged over its 4 phases (SPEC §4)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
