"""Ray Train overhead: the same tiny training loop in a plain process vs a 1-worker ``TorchTrainer``.

``python jobs/benchmark.py train [--steps 100] [--warmup 10] [--batch 8] [--threads 1] [--report-every 25]
[--repeats 3]``

The loop (``tiny_loop``) trains MicroDiT_Nano_4 with the EDM loss and AdamW on a small pool of
fixed random batches (3x32x32 latents, 32x384 captions, mask ratio 0.5, like the demo recipe's
first phase), and calls ``ray.train.report`` every ``--report-every`` steps when it runs inside
Ray Train, as the real loop does. It times every step itself, so the steady-state comparison
(median step time after ``--warmup`` steps) excludes start-up; start-up is reported separately:
for the plain run, building the model; for Ray, the whole ``fit()`` wall time minus the loop's
own steps (worker-group start, process group, placement group, result collection).

Plain and Ray runs alternate ``--repeats`` times, so load from other processes on a shared
machine hits both alike. Two ratios: the median step (compute, the usual step) and the mean step
(throughput, ``ray.train.report`` calls included). Target: Ray Train's steady-state overhead <= 10%.

Measured on Ray 2.60 (Train V2): a report blocks while the previous one is still unconsumed (the
worker's result queue holds one), and the controller drains it on its poll, every
``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S`` = 2 s by default. Reporting more often than every ~2 s
therefore throttles training (here ~0.8 s per report at one report per 0.8 s); at one report
per >= 2 s a report costs milliseconds. ``--report-every 10`` shows the effect.
"""

from __future__ import annotations

import os

# Spinning OpenMP workers fight other processes on a shared 2-core machine (see benchmarks.model);
# set before torch is imported so the Ray workers started by this process inherit it too.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from typing import Any  # noqa: E402

SIZE = "MicroDiT_Nano_4"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="benchmark.py train", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps per run (default 100)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps at the start of each run")
    parser.add_argument("--batch", type=int, default=8, help="images per step (default 8)")
    parser.add_argument("--mask-ratio", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads in both runs (default 1)")
    parser.add_argument(
        "--report-every", type=int, default=25, help="ray.train.report interval in steps (default 25: ~2 s)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="plain/Ray pairs, alternating (default 3)")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def tiny_loop(config: dict[str, Any]) -> dict[str, Any]:
    """Train Nano_4 for ``steps`` steps; returns start-up seconds and every step's seconds."""
    import torch

    from microdit.diffusion import EDMDenoiser, edm_loss
    from microdit.model import MicroDiT
    from microdit.model.sizes import model_config

    started = time.perf_counter()
    in_ray = config["in_ray"]
    if in_ray:
        import ray.train
    torch.set_num_threads(config["threads"])
    torch.manual_seed(config["seed"])
    model = MicroDiT(model_config(SIZE, latent_channels=3, caption_dim=384)).train()
    denoiser = EDMDenoiser(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    gen = torch.Generator().manual_seed(config["seed"])
    b = config["batch"]
    pool = [
        (
            torch.randn(b, 3, 32, 32, generator=gen),
            torch.randn(b, 32, 384, generator=gen),
        )  # (B,C,H,W), (B,L,Dy)
        for _ in range(4)
    ]
    startup = time.perf_counter() - started
    step_seconds: list[float] = []
    report_seconds: list[float] = []  # ray.train.report calls alone (inside step_seconds)
    loss_value = float("nan")
    for step in range(config["steps"]):
        tick = time.perf_counter()
        x0, y = pool[step % len(pool)]
        step_gen = torch.Generator().manual_seed(config["seed"] * 1_000_003 + step)
        loss = edm_loss(
            denoiser, x0, y, p_mean=-0.6, p_std=1.2, mask_ratio=config["mask_ratio"], generator=step_gen
        ).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        loss_value = loss.item()
        if (step + 1) % config["report_every"] == 0:
            metrics = {"loss": loss_value, "step": step + 1}
            if in_ray:
                before = time.perf_counter()
                ray.train.report(metrics)
                report_seconds.append(time.perf_counter() - before)
        step_seconds.append(time.perf_counter() - tick)
    return {
        "startup_s": startup,
        "step_seconds": step_seconds,
        "report_seconds": report_seconds,
        "loss": loss_value,
        "loop_s": time.perf_counter() - started,
    }


def run_plain(config: dict[str, Any]) -> dict[str, Any]:
    started = time.perf_counter()
    out = tiny_loop({**config, "in_ray": False})
    out["wall_s"] = time.perf_counter() - started
    return out


def run_ray(config: dict[str, Any], storage: str) -> dict[str, Any]:
    import ray.train
    from ray.train.torch import TorchTrainer

    started = time.perf_counter()
    trainer = TorchTrainer(
        tiny_loop,
        train_loop_config={**config, "in_ray": True},
        scaling_config=ray.train.ScalingConfig(
            num_workers=1, resources_per_worker={"CPU": config["threads"]}
        ),
        run_config=ray.train.RunConfig(name=f"bench-train-{uuid.uuid4().hex[:8]}", storage_path=storage),
    )
    out = dict(trainer.fit().return_value)
    out["wall_s"] = time.perf_counter() - started
    return out


def _steady(runs: list[dict[str, Any]], warmup: int) -> list[float]:
    return [s for run in runs for s in run["step_seconds"][warmup:]]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.steps <= args.warmup:
        raise SystemExit("benchmark.py train: error: --steps must exceed --warmup")
    from microdit.train.trainer import connect_ray

    connect_ray()
    config = {
        "steps": args.steps,
        "batch": args.batch,
        "mask_ratio": args.mask_ratio,
        "threads": args.threads,
        "report_every": args.report_every,
        "seed": args.seed,
    }
    print(
        f"Ray Train overhead: {SIZE}, batch {args.batch}, mask ratio {args.mask_ratio}, {args.steps} steps "
        f"({args.warmup} untimed), {args.threads} torch thread(s), report every {args.report_every} steps, "
        f"{args.repeats} alternating plain/Ray pairs"
    )
    plain: list[dict[str, Any]] = []
    in_ray: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="microdit-bench-train-") as storage:
        for i in range(args.repeats):
            plain.append(run_plain(config))
            in_ray.append(run_ray(config, storage))
            p, r = plain[-1], in_ray[-1]
            print(
                f"  pair {i + 1}: plain median step {statistics.median(p['step_seconds'][args.warmup :]) * 1e3:.1f} ms"
                f" (wall {p['wall_s']:.1f} s) | Ray median step "
                f"{statistics.median(r['step_seconds'][args.warmup :]) * 1e3:.1f} ms (wall {r['wall_s']:.1f} s)"
            )
    p_steps, r_steps = _steady(plain, args.warmup), _steady(in_ray, args.warmup)
    p_med, r_med = statistics.median(p_steps), statistics.median(r_steps)
    p_mean, r_mean = statistics.fmean(p_steps), statistics.fmean(r_steps)
    reports = [s for r in in_ray for s in r["report_seconds"]]
    ray_startup = statistics.median(r["wall_s"] - sum(r["step_seconds"]) for r in in_ray)
    plain_startup = statistics.median(p["wall_s"] - sum(p["step_seconds"]) for p in plain)
    print(f"steady state, {len(p_steps)} timed steps each:")
    for label, med, mean in (("plain process", p_med, p_mean), ("TorchTrainer (1w)", r_med, r_mean)):
        print(
            f"  {label:<18} median {med * 1e3:8.1f} ms/step   mean {mean * 1e3:8.1f} ms/step   "
            f"{args.batch / mean:7.1f} images/s (mean)"
        )
    print(
        f"  ray.train.report   {len(reports)} calls: median {statistics.median(reports) * 1e3:.1f} ms, "
        f"mean {statistics.fmean(reports) * 1e3:.1f} ms, max {max(reports) * 1e3:.1f} ms"
    )
    for label, ratio in (
        ("per step (median)", r_med / p_med),
        ("throughput (mean, reports included)", r_mean / p_mean),
    ):
        verdict = "PASS" if ratio - 1 <= 0.10 else "FAIL"
        print(
            f"  Ray/plain {label}: {ratio:.3f} -> overhead {(ratio - 1) * 100:+.1f}% (target <= +10%): {verdict}"
        )
    print(
        f"start-up (not in the ratios): plain {plain_startup:.2f} s (model build), "
        f"TorchTrainer {ray_startup:.1f} s (fit() wall minus the loop's steps)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
