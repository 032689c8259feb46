"""Model benchmark on this machine's CPU: deferred-masking speedup and MoE vs dense twin.

``python jobs/benchmark.py model [--size MicroDiT_Micro_2] [--batch 8] [--reps 5]``

1. Forward + backward time per sample (EDM loss, no optimizer step) at 32x32 latents with
   deferred masking at r = 0, 0.5, 0.75, beside the speedup the analytic FLOP count predicts
   (training FLOPs at r = 0 over training FLOPs at r) and the ratio measured / predicted.
   Target: at r = 0.75 the measured speedup reaches >= 80% of the predicted one.
2. Expert-choice MoE against its dense twin (``<size>_dense``: equal active parameters per
   token): time ratio at r = 0 and 0.75, beside their FLOP ratio.
3. Predicted training FLOPs per image of MicroDiT_XL_2 at 256 px for r = 0 and 0.75 (no timing).

Configurations are timed round-robin (one rep of each in turn) and the median is reported, so
load from other processes on a shared machine hits every configuration alike.
"""

from __future__ import annotations

import os

# Spinning OpenMP workers fight every other process on a shared 2-core machine (measured here:
# 2-7x slower steps while other test suites ran); passive waiting keeps timings stable. Only
# effective when torch is not imported yet (as through jobs/benchmark.py); override with
# OMP_WAIT_POLICY=ACTIVE.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import torch  # noqa: E402

from microdit.config.model import ModelConfig  # noqa: E402
from microdit.diffusion import EDMDenoiser, edm_loss  # noqa: E402
from microdit.model import MicroDiT  # noqa: E402
from microdit.model.flops import forward_flops, train_flops_per_image  # noqa: E402
from microdit.model.sizes import model_config, parameter_counts  # noqa: E402

# Micro_2 is the largest registry size whose whole benchmark (3 ratios + dense twin, warm-up and
# reps: 35 steps of 8 samples) fits in ~3 minutes on a 2-core CPU: 16.4 GFLOP per training image
# at r = 0 (~0.3 s per sample at 55-80 GFLOP/s); Small_2 needs 49.1 GFLOP (3x), ~6-8 minutes.
DEFAULT_SIZE = "MicroDiT_Micro_2"
RATIOS = (0.0, 0.5, 0.75)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="benchmark.py model", description=__doc__.splitlines()[0])
    parser.add_argument("--size", default=DEFAULT_SIZE, help=f"registry size (default {DEFAULT_SIZE})")
    parser.add_argument("--batch", type=int, default=8, help="samples per step (default 8)")
    parser.add_argument("--reps", type=int, default=5, help="timed reps per configuration (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed reps per configuration")
    parser.add_argument("--latent-size", type=int, default=32, help="latent side (32 = 256 px)")
    parser.add_argument("--latent-channels", type=int, default=4)
    parser.add_argument("--caption-dim", type=int, default=384, help="caption width (384 = MiniLM)")
    parser.add_argument("--caption-len", type=int, default=77)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--skip-moe", action="store_true", help="skip the MoE vs dense twin comparison")
    return parser


def _step_fn(config: ModelConfig, args: argparse.Namespace, ratio: float, seed: int) -> Callable[[], None]:
    """One training forward + backward of ``config`` on a fixed random batch."""
    torch.manual_seed(seed)
    model = MicroDiT(config).train()
    with torch.no_grad():  # the paper's init outputs zeros; random weights exercise every path
        for param in model.parameters():
            param.normal_(0.0, 0.02)
    denoiser = EDMDenoiser(model)
    gen = torch.Generator().manual_seed(seed)
    s = args.latent_size
    x0 = torch.randn(args.batch, config.latent_channels, s, s, generator=gen)
    y = torch.randn(args.batch, args.caption_len, config.caption_dim, generator=gen)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        loss = edm_loss(denoiser, x0, y, p_mean=-0.6, p_std=1.2, mask_ratio=ratio, generator=gen).loss
        loss.backward()

    return step


def _time_round_robin(steps: dict[str, Callable[[], None]], warmup: int, reps: int) -> dict[str, float]:
    """Median seconds per step of each entry, timed one rep of each in turn."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(reps):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    overrides = {"latent_channels": args.latent_channels, "caption_dim": args.caption_dim}
    moe_cfg = model_config(args.size, **overrides)
    if moe_cfg.masking != "deferred":
        raise SystemExit(f"{args.size}: the benchmark needs deferred masking (masking={moe_cfg.masking!r})")
    dense_cfg = model_config(f"{args.size}_dense", **overrides)
    s, length = args.latent_size, args.caption_len
    counts = parameter_counts(moe_cfg)
    print(
        f"# model benchmark: {args.size}, {counts['total'] / 1e6:.1f}M params "
        f"({counts['active'] / 1e6:.1f}M active), latent {moe_cfg.latent_channels}x{s}x{s} "
        f"({moe_cfg.num_tokens(s)} tokens), caption {length}x{moe_cfg.caption_dim}"
    )
    print(
        f"# CPU: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}; "
        f"load average {os.getloadavg()[0]:.1f}; batch {args.batch}, fp32 forward+backward (EDM loss), "
        f"median of {args.reps} after {args.warmup} warm-up, round-robin"
    )

    steps = {f"moe@{r}": _step_fn(moe_cfg, args, r, seed=0) for r in RATIOS}
    if not args.skip_moe:
        steps.update({f"dense@{r}": _step_fn(dense_cfg, args, r, seed=0) for r in (0.0, 0.75)})
    start = time.perf_counter()
    medians = _time_round_robin(steps, args.warmup, args.reps)
    elapsed = time.perf_counter() - start

    print("\n## deferred masking (MoE model)")
    print(
        f"{'ratio':>5}  {'kept':>4}  {'GFLOP/img':>9}  {'ms/sample':>9}  {'GFLOP/s':>7}  "
        f"{'speedup':>7}  {'predicted':>9}  {'meas/pred':>9}"
    )
    base_time = medians["moe@0.0"]
    base_flops = train_flops_per_image(moe_cfg, s, 0.0, length)
    for r in RATIOS:
        t = medians[f"moe@{r}"]
        flops = train_flops_per_image(moe_cfg, s, r, length)
        speedup, predicted = base_time / t, base_flops / flops
        print(
            f"{r:>5.2f}  {moe_cfg.kept_tokens(s, r):>4}  {flops / 1e9:>9.2f}  {1e3 * t / args.batch:>9.1f}  "
            f"{flops * args.batch / t / 1e9:>7.1f}  {speedup:>6.2f}x  {predicted:>8.2f}x  "
            f"{100 * speedup / predicted:>8.0f}%"
        )
    r75 = (base_time / medians["moe@0.75"]) / (base_flops / train_flops_per_image(moe_cfg, s, 0.75, length))
    print(
        f"target: measured speedup at r=0.75 >= 80% of predicted -> {100 * r75:.0f}% ({'met' if r75 >= 0.8 else 'NOT met'})"
    )

    if not args.skip_moe:
        dense_counts = parameter_counts(dense_cfg)
        print(f"\n## expert-choice MoE vs dense twin ({args.size}_dense)")
        print(
            f"active params: MoE {counts['active']:,} vs dense {dense_counts['active']:,} "
            f"({100 * (dense_counts['active'] / counts['active'] - 1):+.1f}%)"
        )
        print(
            f"{'ratio':>5}  {'MoE ms/sample':>13}  {'dense ms/sample':>15}  {'time MoE/dense':>14}  {'FLOP MoE/dense':>14}"
        )
        for r in (0.0, 0.75):
            tm, td = medians[f"moe@{r}"], medians[f"dense@{r}"]
            fm = forward_flops(moe_cfg, s, r, length).forward
            fd = forward_flops(dense_cfg, s, r, length).forward
            print(
                f"{r:>5.2f}  {1e3 * tm / args.batch:>13.1f}  {1e3 * td / args.batch:>15.1f}  "
                f"{tm / td:>14.2f}  {fm / fd:>14.3f}"
            )

    xl = model_config("MicroDiT_XL_2")
    print(
        "\n## predicted training FLOPs per image, MicroDiT_XL_2 at 256 px (32x32 latent, 77 caption tokens)"
    )
    for r in (0.0, 0.75):
        print(f"r={r:.2f}: {train_flops_per_image(xl, 32, r, 77) / 1e9:,.1f} GFLOP")
    print(f"\n# timed section: {elapsed:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
