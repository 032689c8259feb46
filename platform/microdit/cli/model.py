"""``microdit model``: describe a named MicroDiT size without building it.

Prints the resolved architecture config, total and active parameters (counted on the meta
device: no memory), and forward / training FLOPs per image at a resolution and mask ratio::

    microdit model --size MicroDiT_XL_2
    microdit model --size MicroDiT_Micro_2 --resolution 256 --mask-ratio 0.5 --set caption_dim=1024

``--memory`` prints the predicted peak GPU memory of a training step per GPU instead
(``microdit.model.memory``: weights, grads, optimizer, activations, workspace; add ``--describe``
to print the description as well)::

    microdit model --size MicroDiT_XL_2 --resolution 256 --mask-ratio 0.75 --micro-batch 256 --memory
    microdit model --size MicroDiT_XL_2 --resolution 512 --mask-ratio 0 --strategy fsdp --world-size 8 --memory
"""

from __future__ import annotations

import argparse
from typing import Any

import yaml

from microdit.config.model import ModelConfig
from microdit.errors import ConfigError

VAE_FACTOR = 8  # SDXL VAE: 8x spatial downsampling (SPEC §1)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from microdit.model.sizes import size_names

    parser = subparsers.add_parser(
        "model",
        help="describe a model size: config, parameters, FLOPs per image",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument("--size", required=True, metavar="NAME", help=f"one of: {', '.join(size_names())}")
    parser.add_argument("--resolution", type=int, default=256, help="image side in pixels (default 256)")
    parser.add_argument(
        "--latent-size", type=int, default=None, help=f"latent side; default resolution / {VAE_FACTOR}"
    )
    parser.add_argument(
        "--mask-ratio",
        type=float,
        default=None,
        help="fraction of patches dropped in training (default: the config's mask_ratio)",
    )
    parser.add_argument("--caption-len", type=int, default=77, help="caption tokens per image (default 77)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a ModelConfig field (YAML value), e.g. --set caption_dim=384; repeatable",
    )
    parser.add_argument(
        "--describe",
        action="store_true",
        help="print the resolved config, parameter counts and FLOPs (the output without --memory; with "
        "--memory, both); nothing is built",
    )
    memory = parser.add_argument_group("memory model (--memory)")
    memory.add_argument(
        "--memory", action="store_true", help="print the predicted peak GPU memory per GPU of a training step"
    )
    memory.add_argument(
        "--micro-batch",
        type=int,
        default=None,
        help="images per GPU per forward (default: the largest that fits an 80 GB H100)",
    )
    memory.add_argument(
        "--strategy", choices=("ddp", "fsdp"), default="ddp", help="data parallelism (default ddp)"
    )
    memory.add_argument("--world-size", type=int, default=8, help="number of GPUs (default 8)")
    memory.add_argument(
        "--precision", choices=("bf16", "fp32"), default="bf16", help="bf16 autocast (default) or fp32"
    )
    memory.add_argument(
        "--attention",
        choices=("flash", "math"),
        default="flash",
        help="SDPA backend: flash/efficient (O(T) saved, default) or math (saves the T x T matrix)",
    )
    memory.add_argument("--ema", action="store_true", help="count an fp32 EMA copy of the weights")
    memory.add_argument(
        "--low-precision-norms",
        action="store_true",
        help="LayerNorms in bf16 under autocast (resources.low_precision_norms; the official recipe)",
    )
    memory.add_argument(
        "--activation-checkpointing",
        action="store_true",
        help="recompute each block in backward (resources.activation_checkpointing)",
    )
    parser.set_defaults(func=run)
    return parser


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["caption_dim=384", "qkv_ratio_range=[0.5, 1]"]`` -> ``{"caption_dim": 384, ...}``."""
    overrides: dict[str, Any] = {}
    for item in items:
        field, sep, raw = item.partition("=")
        field = field.strip()
        if not sep or not field:
            raise ConfigError(f"--set {item!r}: expected FIELD=VALUE, e.g. --set caption_dim=384")
        try:
            overrides[field] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {item!r}: value is not valid YAML ({err.__class__.__name__})") from None
    return overrides


def resolve(args: argparse.Namespace) -> tuple[str, ModelConfig, int, float]:
    """Validate the options: (size name, config, latent side, mask ratio)."""
    from microdit.model.sizes import model_config

    config = model_config(args.size, **parse_overrides(args.overrides))
    if args.latent_size is not None:
        latent = args.latent_size
        if latent <= 0:
            raise ConfigError(f"--latent-size={latent}: must be a positive integer")
    else:
        if args.resolution <= 0 or args.resolution % VAE_FACTOR:
            raise ConfigError(
                f"--resolution={args.resolution}: must be a positive multiple of the VAE factor {VAE_FACTOR}"
            )
        latent = args.resolution // VAE_FACTOR
    config.num_tokens(latent)  # raises if the latent is not divisible by the patch size
    ratio = config.mask_ratio if args.mask_ratio is None else float(args.mask_ratio)
    if not 0.0 <= ratio < 1.0:
        raise ConfigError(f"--mask-ratio={ratio}: must be in [0, 1)")
    if ratio > 0 and config.masking == "none":
        raise ConfigError(f"--mask-ratio={ratio}: model.masking='none' drops no patches; use 0")
    if args.caption_len <= 0:
        raise ConfigError(f"--caption-len={args.caption_len}: must be a positive integer")
    if getattr(args, "micro_batch", None) is not None and args.micro_batch <= 0:
        raise ConfigError(f"--micro-batch={args.micro_batch}: must be a positive integer")
    if getattr(args, "world_size", 1) <= 0:
        raise ConfigError(f"--world-size={args.world_size}: must be a positive integer")
    return args.size, config, latent, ratio


def describe(name: str, config: ModelConfig, latent: int, ratio: float, caption_len: int) -> str:
    """The text ``microdit model`` prints (``--describe``)."""
    from microdit.model.flops import forward_flops
    from microdit.model.sizes import parameter_counts

    tokens, kept = config.num_tokens(latent), config.kept_tokens(latent, ratio)
    grid = latent // config.patch_size
    data = config.to_dict()
    if config.pos_interp_scale is None:
        data["pos_interp_scale"] = f"None (-> {config.pos_scale(grid):g} at a {grid}x{grid} grid)"
    width = max(*map(len, data), len("training (3x forward)"))
    lines = [f"model: {name}", "config:"]
    lines += [f"  {key:<{width}}  {value}" for key, value in data.items()]

    counts = parameter_counts(config)
    lines += [
        "parameters:",
        f"  {'total':<{width}}  {counts['total']:,}",
        f"  {'active per token':<{width}}  {counts['active']:,}",
        f"  {'in experts':<{width}}  {counts['experts']:,}",
    ]

    flops = forward_flops(config, latent, ratio, caption_len)
    dense = forward_flops(config, latent, 0.0, caption_len)
    px = latent * VAE_FACTOR
    lines += [
        f"FLOPs per image (GFLOP) at {px} px ({latent}x{latent} latent, {tokens} tokens), "
        f"mask ratio {ratio:g} ({kept} tokens reach the backbone), caption {caption_len} tokens:",
        f"  {'forward':<{width}}  {flops.forward / 1e9:,.2f}   (embed {flops.embed / 1e9:,.2f}, "
        f"mixer {flops.mixer / 1e9:,.2f}, backbone {flops.backbone / 1e9:,.2f}, final {flops.final / 1e9:,.3f})",
        f"  {'training (3x forward)':<{width}}  {flops.train / 1e9:,.2f}",
    ]
    if ratio > 0:
        lines.append(
            f"  {'training at ratio 0':<{width}}  {dense.train / 1e9:,.2f}   "
            f"(masking saves {dense.train / flops.train:.2f}x)"
        )
    return "\n".join(lines)


def describe_memory(
    name: str, config: ModelConfig, latent: int, ratio: float, args: argparse.Namespace
) -> str:
    """The table ``microdit model --memory`` prints (bytes from ``microdit.model.memory``)."""
    from microdit.model.memory import GIB, H100_80GB_BYTES, estimate_memory, max_micro_batch

    options = dict(
        caption_len=args.caption_len,
        precision=args.precision,
        strategy=args.strategy,
        world_size=args.world_size,
        attention=args.attention,
        ema=args.ema,
        low_precision_norms=args.low_precision_norms,
        activation_checkpointing=args.activation_checkpointing,
    )
    largest = max_micro_batch(config, latent, ratio, **options)
    batch = args.micro_batch or max(largest, 1)
    est = estimate_memory(config, latent, ratio, batch, **options)
    tokens, kept = config.num_tokens(latent), config.kept_tokens(latent, ratio)

    def gib(value: int) -> str:
        return f"{value / GIB:9.2f} GiB"

    shard = f"/{args.world_size}" if args.strategy == "fsdp" and args.world_size > 1 else ""
    parallel = f"{args.strategy} over {args.world_size} GPU{'s' if args.world_size > 1 else ''}"
    chosen = "" if args.micro_batch else " (the largest that fits)"
    lines = [
        f"peak GPU memory per GPU: {name} at {latent * VAE_FACTOR} px ({latent}x{latent} latent), mask ratio "
        f"{ratio:g} ({kept} of {tokens} tokens reach the backbone), caption {args.caption_len} tokens",
        f"  micro-batch {batch}{chosen}, {args.precision}{' autocast' if args.precision == 'bf16' else ''}, "
        f"{args.attention} attention, {parallel}"
        + (", bf16 LayerNorms" if args.low_precision_norms and args.precision == "bf16" else "")
        + (", activation checkpointing" if args.activation_checkpointing else ""),
    ]
    notes = {
        "weights": f"fp32 parameters {est.parameters / GIB:.2f}"
        + (f" (full + 1{shard} shard)" if shard else "")
        + (f" + bf16 autocast copies {est.weight_copies / GIB:.2f}" if est.weight_copies else ""),
        "grads": f"fp32 gradients{shard} {est.gradients / GIB:.2f}"
        + (f" + DDP buckets {est.grad_buckets / GIB:.2f}" if est.grad_buckets else ""),
        "optimizer": f"AdamW exp_avg + exp_avg_sq, fp32{shard}",
        "activations": f"{est.activations_per_image / GIB:.4f} GiB saved for backward per image x {batch}",
        "workspace/other": f"backward transients {est.backward_transient / GIB:.2f}"
        + (f" + FSDP unsharded grads {est.fsdp_transient / GIB:.2f}" if est.fsdp_transient else "")
        + f" + CUDA/NCCL {est.fixed_overhead / GIB:.2f} + fragmentation {est.fragmentation / GIB:.2f}"
        + (f" + EMA {est.ema / GIB:.2f}" if est.ema else ""),
        "total": "peak of backward" if est.total == est.backward_peak else "peak of the optimizer step",
    }
    lines += [f"  {label:<16} {gib(value)}   {notes[label]}" for label, value in est.rows()]
    headroom = H100_80GB_BYTES - est.total
    verdict = (
        f"yes ({headroom / GIB:.1f} GiB free)" if headroom >= 0 else f"no (over by {-headroom / GIB:.1f} GiB)"
    )
    lines.append(
        f"  fits an 80 GB H100 ({H100_80GB_BYTES / GIB:.1f} GiB): {verdict}; largest micro-batch that fits: {largest}"
    )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    name, config, latent, ratio = resolve(args)
    if args.describe or not args.memory:
        print(describe(name, config, latent, ratio, args.caption_len))
    if args.memory:
        print(describe_memory(name, config, latent, ratio, args))
    return 0
