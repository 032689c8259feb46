"""``microdit prepare``: encode images + captions into a latent set, or build the demo sets.

    microdit prepare demo [--root DIR] [--resolution 32] [--size tiny|small|default]
    microdit prepare SOURCE --out NAME_OR_DIR [--tag real|synthetic] [--resolution 256 --resolution 512]
                     [--vae pixels|HUB_ID|DIR] [--text-encoder minilm|HUB_ID|DIR] [--max-length 77] ...

SOURCE is an image folder (sidecar .txt captions), a .jsonl/.csv index, a WebDataset .tar (or a
folder of them), or a Parquet file (or folder) with image bytes + captions, on a local or shared
disk; ``--format`` overrides the guess. ``--out`` and ``--root`` may be local directories or
object-store URIs (``s3://bucket/sets/x``); a bare ``--out`` name lands under $MICRODIT_DATA_ROOT
(default <$MICRODIT_ROOT>/data). The CLI only validates and resolves options, then calls ``microdit.data.prepare``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from microdit.config.data import TEXT_MODEL_KINDS, PrepareConfig
from microdit.errors import ConfigError


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "prepare",
        help="images + captions -> latent shards (or `prepare demo`)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("source", help="'demo', or an image folder / index / .tar / .parquet path")
    parser.add_argument("--out", help="set directory or URI (s3://...), or a bare name under $MICRODIT_DATA_ROOT")
    parser.add_argument(
        "--root", help="demo only: directory or URI for the demo sets (default $MICRODIT_DATA_ROOT)"
    )
    parser.add_argument("--size", default="default", help="demo only: tiny | small | default")
    parser.add_argument("--tag", default="real", choices=("real", "synthetic"), help="what every row of the set is")
    parser.add_argument("--format", default="auto", choices=("auto", "folder", "webdataset", "parquet"),
                        help="source format (auto: from the path)")
    parser.add_argument(
        "--dataset", default="", help="dataset name stored per row (default: the path's stem)"
    )
    parser.add_argument("--index", help="folder: a .jsonl/.csv listing file + caption instead of sidecars")
    parser.add_argument("--image-column", default="image", help="parquet sources: the image bytes column")
    parser.add_argument("--caption-column", default="caption", help="parquet sources: the caption column")
    parser.add_argument("--id-column", help="a stable id column (default: file path or file/row)")
    parser.add_argument(
        "--resolution", type=int, action="append", help="pixel size, repeatable (default 256; demo 32)"
    )
    parser.add_argument("--vae", default="pixels", help="'pixels' or an AutoencoderKL hub id / directory")
    parser.add_argument("--vae-subfolder", help="subfolder of the VAE repository or directory")
    parser.add_argument("--vae-scaling-factor", type=float, help="latent scaling (default: the VAE config's)")
    parser.add_argument("--vae-shift-factor", type=float, help="latent shift (default: the VAE config's, or 0)")
    parser.add_argument(
        "--text-encoder", default="minilm", help="'minilm' (packaged) or a hub id / directory"
    )
    parser.add_argument("--text-encoder-kind", default="auto", choices=TEXT_MODEL_KINDS,
                        help="how to load --text-encoder (auto: from its files)")
    parser.add_argument("--max-length", type=int, help="caption tokens L (default 77; demo 32)")
    parser.add_argument("--rows-per-shard", type=int, default=512, help="images per shard (one unit of work)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per encoder forward")
    parser.add_argument("--encoders", type=int, default=1, help="encoder actors (one per GPU)")
    parser.add_argument("--gpus-per-encoder", type=float, default=0.0, help="GPUs per encoder actor")
    parser.add_argument("--cpus-per-encoder", type=float, default=1.0, help="CPUs per encoder actor")
    parser.add_argument(
        "--min-side",
        type=int,
        help="skip images whose shorter side is smaller (default: the smallest --resolution; "
        "larger resolutions are upsampled, bicubic)",
    )
    parser.add_argument("--seed", type=int, default=0, help="VAE posterior sampling seed (per shard: + shard index)")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)
    return parser


def guess_format(path: Path) -> str:
    """folder | webdataset | parquet from the path's shape."""
    if path.is_dir():
        if any(path.glob("*.tar")):
            return "webdataset"
        if any(path.glob("*.parquet")):
            return "parquet"
        return "folder"
    suffix = path.suffix.lower()
    if suffix == ".tar":
        return "webdataset"
    if suffix == ".parquet":
        return "parquet"
    if suffix in (".jsonl", ".csv"):
        return "folder"
    raise ConfigError(f"source {str(path)!r}: not a folder, .tar, .parquet, .jsonl or .csv (does it exist?)")


def build_config(args: argparse.Namespace) -> PrepareConfig:
    path = Path(args.source).expanduser()
    kind = guess_format(path) if args.format == "auto" else args.format
    if not args.out:
        raise ConfigError("--out is required: a set directory, a URI (s3://...) or a bare set name")
    source = {
        "kind": kind,
        "path": str(path),
        "tag": args.tag,
        "dataset": args.dataset,
        "index": args.index,
        "image_column": args.image_column,
        "caption_column": args.caption_column,
        "id_column": args.id_column,
    }
    return PrepareConfig.from_dict(
        {
            "source": source,
            "out": args.out,
            "resolutions": list(args.resolution or (256,)),
            "vae": {
                "name": args.vae,
                "scaling_factor": args.vae_scaling_factor,
                "shift_factor": args.vae_shift_factor,
                "subfolder": args.vae_subfolder,
            },
            "text_encoder": {
                "name": args.text_encoder,
                "max_length": args.max_length or 77,
                "kind": args.text_encoder_kind,
            },
            "rows_per_shard": args.rows_per_shard,
            "encode_batch_size": args.batch_size,
            "num_encoders": args.encoders,
            "gpus_per_encoder": args.gpus_per_encoder,
            "cpus_per_encoder": args.cpus_per_encoder,
            "min_side": args.min_side,
            "seed": args.seed,
        }
    )


def run(args: argparse.Namespace) -> int:
    if args.source == "demo":
        return run_demo(args)
    config = build_config(args)
    if args.dry_run:
        print(json.dumps(config.to_dict(), indent=2))
        return 0
    from microdit.data.prepare import prepare

    summary = prepare(config, progress=not args.no_progress)
    print(summary.format())
    return 0


def run_demo(args: argparse.Namespace) -> int:
    if args.out:
        raise ConfigError(
            "--out is not used by `prepare demo`: the sets are named demo_real, demo_real_heldout "
            "and demo_synthetic under --root"
        )
    from microdit import storage
    from microdit.data.demo import demo_configs, ensure_demo_sets
    from microdit.data.manifest import data_root, load_manifest

    root = storage.resolve(args.root) if args.root else data_root()
    resolutions = args.resolution or [32]
    max_length = args.max_length or 32
    if args.dry_run:
        configs = demo_configs(root, resolutions, args.size, args.seed, max_length)
        print(json.dumps({name: c.to_dict() for name, c in configs.items()}, indent=2))
        return 0
    paths = ensure_demo_sets(
        root,
        resolution=resolutions,
        size=args.size,
        seed=args.seed,
        max_length=max_length,
        progress=not args.no_progress,
    )
    for name, path in paths.items():
        manifest = load_manifest(path)
        skipped = ", ".join(f"{k}={v}" for k, v in sorted(manifest.skipped.items())) or "none"
        print(
            f"{name}: {manifest.rows_total} rows in {len(manifest.shards)} shards at {path} "
            f"(skipped: {skipped}; built in {manifest.seconds:.1f} s)"
        )
    return 0
