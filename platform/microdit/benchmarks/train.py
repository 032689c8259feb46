"""The training loop against the model: the real demo loop vs plain forward+backward, Ray Train overhead,
and the time the loop waits for its input.

``python jobs/benchmark.py train [--part all|demo|overhead|feed] [--recipe demo] [--set KEY=VALUE ...]
[--ref-reps 12] [--steps 100] [--warmup 10] [--batch 8] [--threads 1] [--report-every 25] [--repeats 3]``

**Part feed** (``--part feed``, not in ``all``): the data wait per step of the old synchronous fp32
input path against ``train.feed.BatchFeed``; see ``microdit.benchmarks.feed`` for its options.

**Part 1, demo loop vs model** (``--part demo``): runs the real ``microdit train demo`` (the
recipe's ``TorchTrainer``, workers, data stream, logging, checkpoints and phase-end sample grids;
MLflow and Ray storage in a temporary folder) and reads its logged ``flops_per_s`` windows (the
loop's own analytic FLOP count over wall time, all workers together). Steady state = the median
window of each phase without its first window (start-up, stream opening, the previous phase's
sample grid and checkpoint). The reference is plain forward+backward (EDM loss, no optimizer, as
``benchmark.py model``) of the same resolved model at each phase's mask ratio, masking, per-worker
micro-batch and ``resources.torch_threads``, run in ``num_workers`` concurrent Ray tasks of
``cpus_per_worker`` CPUs (the cores the workers get), measured right before and right after the
demo run (their mean). Printed: per phase and overall (FLOP-weighted) the ratio loop / model.
Target: >= 50%.

**Part 2, Ray Train overhead** (``--part overhead``): the same tiny training loop in a plain
process vs a 1-worker ``TorchTrainer``.

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
    parser.add_argument("--part", choices=("all", "demo", "overhead", "feed"), default="all",
                        help="demo loop vs model, Ray overhead, both (all), or the input wait per step (feed)")
    parser.add_argument("--recipe", default="demo", help="part 1: the recipe to run (default demo)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="part 1: recipe override")
    parser.add_argument(
        "--ref-reps", type=int, default=12, help="part 1: timed reference steps per phase config"
    )
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
    from microdit.benchmarks.feed import add_arguments

    add_arguments(parser)
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


# ---------------------------------------------------------------------------------------------- part 1
def reference_flops(
    model_config: dict[str, Any], configs: list[dict[str, Any]], threads: int, reps: int, warmup: int = 3
) -> list[float]:
    """Plain forward+backward FLOP/s of one process for each config (round-robin, median step)."""
    import torch

    from microdit.benchmarks.model import _time_round_robin
    from microdit.config.model import ModelConfig
    from microdit.diffusion import EDMDenoiser, edm_loss
    from microdit.model import MicroDiT
    from microdit.model.flops import train_flops_per_image

    torch.set_num_threads(threads)
    cfg = ModelConfig.from_dict(model_config)
    steps = {}
    for i, c in enumerate(configs):
        torch.manual_seed(i)
        model = MicroDiT(cfg).train()
        with torch.no_grad():  # the paper's init outputs zeros; random weights exercise every path
            for param in model.parameters():
                param.normal_(0.0, 0.02)
        denoiser = EDMDenoiser(model)
        gen = torch.Generator().manual_seed(i)
        s, b = c["latent"], c["batch"]
        x0 = torch.randn(b, cfg.latent_channels, s, s, generator=gen)  # (B, C, h, w)
        y = torch.randn(b, c["caption_len"], cfg.caption_dim, generator=gen)  # (B, L, Dy)

        def step(model=model, denoiser=denoiser, x0=x0, y=y, gen=gen, c=c) -> None:
            model.zero_grad(set_to_none=True)
            edm_loss(
                denoiser,
                x0,
                y,
                p_mean=c["p_mean"],
                p_std=c["p_std"],
                mask_ratio=c["mask_ratio"],
                masking=c["masking"],
                generator=gen,
            ).loss.backward()

        steps[i] = step
    medians = _time_round_robin(steps, warmup, reps)
    return [
        train_flops_per_image(cfg, c["latent"], c["mask_ratio"], c["caption_len"]) * c["batch"] / medians[i]
        for i, c in enumerate(configs)
    ]


def run_reference(
    recipe, model_config, caption_len: int, configs: list[dict[str, Any]], reps: int
) -> list[float]:
    """Aggregate plain FLOP/s per config: ``num_workers`` concurrent processes shaped like the workers."""
    import ray

    res = recipe.resources
    task = ray.remote(num_cpus=res.cpus_per_worker)(reference_flops)
    runs = ray.get(
        [
            task.remote(model_config.to_dict(), configs, res.torch_threads, reps)
            for _ in range(max(res.num_workers, 1))
        ]
    )
    return [sum(values) for values in zip(*runs)]


def phase_configs(recipe, caption_len: int) -> list[dict[str, Any]]:
    world = max(recipe.resources.num_workers, 1)
    return [
        {
            "latent": phase.resolution // recipe.vae_factor,
            "mask_ratio": phase.mask_ratio,
            "masking": phase.masking,
            "batch": phase.per_worker_micro_batch(world),
            "caption_len": caption_len,
            "p_mean": phase.p_mean,
            "p_std": phase.p_std,
        }
        for phase in recipe.phases
    ]


def loop_windows(uri: str, run_id: str) -> list[dict[str, float]]:
    """The run's logged windows: step, phase, flops_per_s, images_seen (rank 0's log steps)."""
    from microdit.tracking import client

    mlflow_client = client(uri)
    series = {
        key: {m.step: m.value for m in mlflow_client.get_metric_history(run_id, key)}
        for key in ("flops_per_s", "phase", "images_seen")
    }
    return [
        {
            "step": step,
            "flops_per_s": value,
            "phase": int(series["phase"][step]),
            "images": series["images_seen"][step],
        }
        for step, value in sorted(series["flops_per_s"].items())
        if step in series["phase"] and step in series["images_seen"]
    ]


def demo_vs_model(args: argparse.Namespace, storage: str) -> float:
    """Part 1 (module docstring); returns the overall ratio loop / model."""
    from microdit.config.recipe import load_recipe
    from microdit.model.flops import train_flops_per_image
    from microdit.train.trainer import ensure_data, resolve_model, run_training

    uri = f"sqlite:///{storage}/mlflow.db"
    name = f"bench-demo-{uuid.uuid4().hex[:8]}"
    recipe = load_recipe(
        args.recipe,
        [
            f"name={name}",
            f"tracking.mlflow_uri={uri}",
            f"tracking.storage_path={storage}/runs",
            "tracking.experiment=microdit-benchmark",
            *args.overrides,
        ],
    )
    ensure_data(recipe)
    model_config, caption_len = resolve_model(recipe)
    res = recipe.resources
    configs = phase_configs(recipe, caption_len)
    print(
        f"demo loop vs model: recipe {args.recipe!r} ({recipe.model.get('size', '?')}), {res.num_workers} worker(s) x "
        f"{res.cpus_per_worker} CPU x {res.torch_threads} torch thread(s); phases: "
        + ", ".join(
            f"{p.name} {p.total_steps()} steps r={p.mask_ratio} micro-batch {c['batch']}"
            for p, c in zip(recipe.phases, configs)
        )
    )
    load_before = os.getloadavg()[0]
    before = run_reference(recipe, model_config, caption_len, configs, args.ref_reps)
    started = time.perf_counter()
    summary = run_training(recipe)
    wall = time.perf_counter() - started
    after = run_reference(recipe, model_config, caption_len, configs, args.ref_reps)
    load_after = os.getloadavg()[0]
    reference = [(a + b) / 2 for a, b in zip(before, after)]
    windows = loop_windows(uri, summary.mlflow_run_id)
    flops_per_image = [
        train_flops_per_image(model_config, c["latent"], c["mask_ratio"], caption_len) for c in configs
    ]
    previous_images = 0.0
    for w in windows:  # the window's FLOPs and seconds
        w["flops"] = (w["images"] - previous_images) * flops_per_image[w["phase"]]
        w["seconds"] = w["flops"] / w["flops_per_s"]
        previous_images = w["images"]
    print(
        f"{'phase':<10} {'windows':>7} {'loop GFLOP/s':>12} {'(per worker)':>12} {'model GFLOP/s':>13} "
        f"{'(before/after)':>15} {'loop/model':>10}"
    )
    steady_loop_s = steady_model_s = 0.0
    for index, phase in enumerate(recipe.phases):
        mine = [w for w in windows if w["phase"] == index][1:]  # the first window holds the phase start
        if not mine:
            print(f"{phase.name:<10} {0:>7}   (too short for a steady window: lengthen it or log more often)")
            continue
        loop = statistics.median(w["flops_per_s"] for w in mine)
        steady_loop_s += sum(w["seconds"] for w in mine)
        steady_model_s += sum(w["flops"] for w in mine) / reference[index]
        print(
            f"{phase.name:<10} {len(mine):>7} {loop / 1e9:>12.1f} {loop / 1e9 / max(res.num_workers, 1):>12.1f} "
            f"{reference[index] / 1e9:>13.1f} {f'{before[index] / 1e9:.0f}/{after[index] / 1e9:.0f}':>15} "
            f"{loop / reference[index]:>10.0%}"
        )
    ratio = steady_model_s / steady_loop_s if steady_loop_s else float("nan")
    total_flops = sum(w["flops"] for w in windows)
    whole = total_flops / sum(w["seconds"] for w in windows) if windows else float("nan")
    verdict = "PASS" if ratio >= 0.5 else "FAIL"
    print(
        f"  steady state, all phases (FLOP-weighted): loop / model = {ratio:.0%} (target >= 50%): {verdict}"
    )
    print(
        f"  whole loop incl. first windows, sample grids, checkpoints: {whole / 1e9:.1f} GFLOP/s; "
        f"run wall {wall:.0f} s (start-up included), {summary.global_step} steps; "
        f"1-min load average {load_before:.1f} before, {load_after:.1f} after"
    )
    return ratio


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.steps <= args.warmup:
        raise SystemExit("benchmark.py train: error: --steps must exceed --warmup")
    import ray

    from microdit.cluster import connect_ray

    if not ray.is_initialized() and not os.environ.get("RAY_ADDRESS"):  # connect_ray's cluster, quieter
        os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "300")
        ray.init(
            _node_ip_address="127.0.0.1",
            dashboard_host="127.0.0.1",
            include_dashboard=True,
            log_to_driver=False,
        )
    connect_ray()
    if args.part == "feed":
        from microdit.benchmarks.feed import main as feed_main

        feed_main(args)
        return 0
    if args.part in ("all", "demo"):
        with tempfile.TemporaryDirectory(prefix="microdit-bench-demo-") as storage:
            demo_vs_model(args, storage)
    if args.part == "demo":
        return 0
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
