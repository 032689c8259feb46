"""``prepare``: images + captions -> a latent set (Parquet shards + manifest), with Ray Data.

Pipeline (one Ray Data dataset, streamed; on CPU-only clusters Ray fuses the decode step into
the encoder actors because their resources match, on GPU clusters decoding runs in CPU tasks):

    units (from_items, one row per unit)
      -> decode_unit      CPU tasks: load, decode, skip bad items by reason (``too_small``: shorter
                          side < min_side, default the smallest resolution), resize shorter side
                          (bicubic, antialiased; images smaller than a resolution are upsampled)
                          + center crop at every resolution -> uint8 pixels
      -> EncodeAndWrite   actor pool (``num_encoders`` actors, ``gpus_per_encoder`` each): VAE on
                          [-1, 1] images and text encoder on captions in ``encode_batch_size``
                          micro-batches, fp16 -> one shard written atomically -> a summary row
                          holding the shard's footer metadata
      -> driver           progress bar, then the manifest

The output (``out``) is a set location (``microdit.data.manifest.resolve_set_path``): a local or
shared directory or an object-store URI (``s3://bucket/sets/x``). The actors may run on other
nodes and write their shards straight to it through ``microdit.storage``; the driver never reads
its own disk to learn what they wrote: the manifest is built from the metadata the actors return,
plus, for shards an earlier run wrote, their footers read through storage.

Resume without duplicates: the source's item list is deterministic, so it is cut into fixed
units of ``rows_per_shard`` items and unit ``i`` always becomes ``shard-<i>.parquet``. A shard
file exists whole or not at all (temp + rename on a disk, one upload to an object store), so a
re-run processes only the units whose shard is missing (listed through storage); a finished set (``complete`` manifest, same config, same items) is a no-op. A
re-run with a different config or a changed source is refused rather than mixing encodings.
Skipped items are counted per shard (in its metadata) and summed into the manifest.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa

from microdit import storage
from microdit.cluster import connect_ray
from microdit.config.data import PrepareConfig, SourceConfig
from microdit.console import Progress
from microdit.data.images import (
    NO_CAPTION,
    UNDECODABLE,
    SkipItem,
    check_size,
    decode_image,
    resize_center_crop,
)
from microdit.data.manifest import Manifest, load_manifest, resolve_set_path, save_manifest, set_exists
from microdit.data.schema import latent_column, shard_footers, shard_index, shard_name, tensor_specs
from microdit.data.sources import default_dataset_name, open_source
from microdit.errors import ConfigError

# Fields that change how fast a set is made, not what it contains: free to differ on resume.
_RUNTIME_FIELDS = ("encode_batch_size", "num_encoders", "gpus_per_encoder", "cpus_per_encoder")


@dataclass
class PrepareSummary:
    """What one ``prepare`` call did (``rows_written`` / ``skipped`` count this call only)."""

    out: str  # the set's location (absolute path or URI)
    rows_written: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    shards_written: int = 0
    shards_total: int = 0
    rows_total: int = 0
    seconds: float = 0.0
    already_complete: bool = False

    @property
    def images_per_s(self) -> float:
        return (self.rows_written + sum(self.skipped.values())) / self.seconds if self.seconds > 0 else 0.0

    def format(self) -> str:
        if self.already_complete:
            return f"{self.out}: already complete ({self.rows_total} rows in {self.shards_total} shards); nothing to do"
        skipped = ", ".join(f"{k}={v}" for k, v in sorted(self.skipped.items())) or "none"
        return (
            f"{self.out}: wrote {self.rows_written} rows in {self.shards_written} shards "
            f"({self.rows_total} rows, {self.shards_total} shards in the set); skipped: {skipped}; "
            f"{self.images_per_s:.1f} images/s over {self.seconds:.1f} s"
        )


def content_fingerprint(config: PrepareConfig) -> dict[str, Any]:
    """The parts of a config that decide a set's contents (compared on resume).

    ``min_side`` is recorded resolved (``effective_min_side``), so a set's manifest says which
    images it kept whatever default was in force when it was made.
    """
    data = config.to_dict()
    for name in _RUNTIME_FIELDS:
        data.pop(name)
    data.pop("out")
    data["min_side"] = config.effective_min_side
    return data


def recorded_fingerprint(recorded: dict[str, Any]) -> dict[str, Any]:
    """A manifest's ``prepare`` fingerprint, comparable with ``content_fingerprint``.

    Sets made before ``min_side`` was recorded resolved hold ``min_side: null``, which then meant
    max(resolutions): resolve it that way (identical for single-resolution sets, and a
    multi-resolution set filtered at its largest size is rightly reported as different).
    """
    data = dict(recorded)
    if data.get("min_side") is None and data.get("resolutions"):
        data["min_side"] = max(data["resolutions"])
    return data


def prepare(config: PrepareConfig, progress: bool = False) -> PrepareSummary:
    """Build (or finish) the set described by ``config``; see the module docstring. ``progress``: a bar
    on a terminal, else a line every 30 s and one at the end (``console.Progress``)."""
    import ray

    started = time.perf_counter()
    out = resolve_set_path(config.out)
    storage.makedirs(out)
    source = open_source(config.source, image_size=max(config.resolutions))
    refs = source.refs()
    keys = [r["key"] for r in refs]
    if len(set(keys)) != len(keys):
        dup = next(k for k, n in Counter(keys).items() if n > 1)
        raise ConfigError(
            f"source {config.source.path or config.source.kind!r}: item key {dup!r} occurs twice; "
            "ids must be unique (set source.id_column, or split the source)"
        )
    units = [refs[i : i + config.rows_per_shard] for i in range(0, len(refs), config.rows_per_shard)]
    items_hash = hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]
    fingerprint = {**content_fingerprint(config), "items": len(refs), "items_sha256": items_hash}

    created, seconds_before = None, 0.0
    if set_exists(out):
        previous = load_manifest(out)
        created, seconds_before = previous.created, previous.seconds
        recorded = recorded_fingerprint(previous.prepare)
        if recorded != fingerprint:
            raise ConfigError(
                f"{out} was prepared with other settings or another source "
                f"({_diff(recorded, fingerprint)}); use a new --out or delete the directory"
            )
        if previous.complete:
            return PrepareSummary(
                out, shards_total=len(previous.shards), rows_total=previous.rows_total, already_complete=True
            )
    _remove_stale_temps(out)
    done = {i for i in map(shard_index, storage.list_names(out)) if i is not None}
    pending = [i for i in range(len(units)) if i not in done]
    dataset = default_dataset_name(config.source)
    started_manifest = _manifest(config, out, dataset, fingerprint, len(units), complete=False)
    started_manifest.created = created or started_manifest.created
    save_manifest(out, started_manifest)

    summary = PrepareSummary(out)
    written: dict[int, dict[str, Any]] = {}  # unit -> footer metadata of the shard written now
    if pending:
        connect_ray()  # RAY_ADDRESS or a loopback cluster; ships the package to actors on any node
        items = [{"unit": i, "refs": json.dumps(units[i])} for i in pending]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        ds = ds.map_batches(
            decode_unit,
            batch_size=1,
            batch_format="pyarrow",
            fn_kwargs={
                "source": config.source.to_dict(),
                "resolutions": list(config.resolutions),
                "min_side": config.effective_min_side,
                "dataset": dataset,
            },
        )
        ds = ds.map_batches(
            EncodeAndWrite,
            batch_size=1,
            batch_format="pyarrow",
            fn_constructor_kwargs={"config": config.to_dict(), "out": out},
            compute=ray.data.ActorPoolStrategy(size=config.num_encoders),
            num_gpus=config.gpus_per_encoder or None,
            num_cpus=config.cpus_per_encoder,
        )
        ds.context.enable_progress_bars = False
        skipped: Counter[str] = Counter()
        images = sum(len(units[i]) for i in pending)
        bar = Progress(f"prepare {storage.name(out)}", images, "img", enabled=progress)
        for row in ds.iter_rows():
            written[int(row["unit"])] = json.loads(row["meta"])
            summary.rows_written += row["rows"]
            summary.shards_written += 1
            skipped.update(json.loads(row["skipped"]))
            bar.update(summary.rows_written + sum(skipped.values()), shards=f"{summary.shards_written}/{len(pending)}",
                       skipped=sum(skipped.values()))
        bar.close()
        summary.skipped = dict(skipped)

    earlier = shard_footers(out, sorted(done))  # shards of earlier runs: their footers, through storage
    manifest = _finalise(config, out, dataset, fingerprint, len(units), {**earlier, **written})
    manifest.created = started_manifest.created
    manifest.seconds = round(seconds_before + time.perf_counter() - started, 3)
    save_manifest(out, manifest)
    summary.seconds = time.perf_counter() - started
    summary.shards_total, summary.rows_total = len(manifest.shards), manifest.rows_total
    return summary


def decode_unit(
    batch: pa.Table, source: dict[str, Any], resolutions: list[int], min_side: int, dataset: str
) -> pa.Table:
    """One unit of refs -> one row: kept items' keys/captions/sizes + uint8 pixels per resolution."""
    unit = batch.column("unit")[0].as_py()
    refs = json.loads(batch.column("refs")[0].as_py())
    src = open_source(SourceConfig.from_dict(source), image_size=max(resolutions))
    kept: dict[str, list] = {"key": [], "caption": [], "width": [], "height": []}
    pixels: dict[int, list[np.ndarray]] = {r: [] for r in resolutions}
    skipped: Counter[str] = Counter()
    for item in src.load(refs):
        try:
            if item.skip:
                raise SkipItem(item.skip)
            caption = (item.caption or "").strip()
            if not caption:
                raise SkipItem(NO_CAPTION)
            if item.image is None:
                raise SkipItem(UNDECODABLE, "no image data")
            image = decode_image(item.image)
            check_size(image, min_side)
            crops = {r: resize_center_crop(image, r) for r in resolutions}  # (R, R, 3) uint8 each
        except SkipItem as skip:
            skipped[skip.reason] += 1
            continue
        kept["key"].append(f"{dataset}/{item.key}")
        kept["caption"].append(caption)
        kept["width"].append(image.size[0])
        kept["height"].append(image.size[1])
        for r in resolutions:
            pixels[r].append(crops[r])
    columns = {"unit": [unit], "meta": [json.dumps({**kept, "skipped": dict(skipped)})]}
    for r in resolutions:
        stacked = np.stack(pixels[r]) if pixels[r] else np.zeros((0, r, r, 3), np.uint8)  # (n, R, R, 3)
        columns[f"pixels_{r}"] = [stacked.tobytes()]
    return pa.table(
        {
            k: pa.array(v, type=pa.large_binary() if k.startswith("pixels") else None)
            for k, v in columns.items()
        }
    )


class EncodeAndWrite:
    """Actor: VAE + text encoder loaded once; each call encodes one unit and writes its shard."""

    def __init__(self, config: dict[str, Any], out: str) -> None:
        import torch

        from microdit.data.encoders import build_image_encoder, build_text_encoder

        self.config = PrepareConfig.from_dict(config)
        self.out = out  # a resolved location: never re-resolved here (this may be another node)
        use_gpu = self.config.gpus_per_encoder > 0 and torch.cuda.is_available()
        self.device = torch.device("cuda" if use_gpu else "cpu")
        if not use_gpu:
            torch.set_num_threads(max(1, int(self.config.cpus_per_encoder)))
        self.vae = build_image_encoder(self.config.vae, self.device)
        self.text = build_text_encoder(self.config.text_encoder, self.device)
        f = self.vae.downsample
        bad = [r for r in self.config.resolutions if r % f]
        if bad:
            raise ConfigError(
                f"prepare.resolutions={bad}: not divisible by the VAE's downsampling factor {f}"
            )
        self.latent_shapes = {r: (self.vae.latent_channels, r // f, r // f) for r in self.config.resolutions}
        self.tensors = tensor_specs(
            list(self.config.resolutions), self.latent_shapes, (self.text.max_length, self.text.dim)
        )

    def __call__(self, batch: pa.Table) -> pa.Table:
        import torch

        from microdit.data.images import to_model_range
        from microdit.data.schema import build_table, table_metadata, write_shard

        started = time.perf_counter()
        unit = batch.column("unit")[0].as_py()
        meta = json.loads(batch.column("meta")[0].as_py())
        n, step = len(meta["key"]), self.config.encode_batch_size
        generator = torch.Generator(self.device).manual_seed(self.config.seed * 1_000_003 + unit)
        latents = {r: [] for r in self.config.resolutions}
        texts, lengths = [], []
        for r in self.config.resolutions:
            pixels = np.frombuffer(batch.column(f"pixels_{r}")[0].as_py(), np.uint8).reshape(n, r, r, 3)
            for i in range(0, n, step):
                images = to_model_range(pixels[i : i + step]).to(self.device)  # (b, 3, R, R) in [-1, 1]
                latents[r].append(self.vae.encode(images, generator).half().cpu().numpy())  # (b, C, h, w)
        for i in range(0, n, step):
            states, length = self.text.encode(meta["caption"][i : i + step])  # (b, L, Dy), (b,)
            texts.append(states.half().cpu().numpy())
            lengths.append(length.cpu().numpy())
        tag = self.config.source.tag
        rows = {
            "id": meta["key"],
            "caption": meta["caption"],
            "source": [tag] * n,
            "dataset": [default_dataset_name(self.config.source)] * n,
            "width": meta["width"],
            "height": meta["height"],
            "text_emb": np.concatenate(texts) if texts else [],
            "text_len": np.concatenate(lengths) if lengths else [],
        }
        for r in self.config.resolutions:
            rows[latent_column(r)] = np.concatenate(latents[r]) if latents[r] else []
        extra = {
            "skipped": meta["skipped"],
            "unit": unit,
            # stored dtype fp16; the encoders ran in float32 on self.device
            "vae": {**self.vae.describe(), "dtype": "float16", "compute_dtype": "float32"},
            "text_encoder": {**self.text.describe(), "dtype": "float16", "compute_dtype": "float32"},
        }
        table = build_table(rows, self.tensors, extra)
        write_shard(table, storage.join(self.out, shard_name(unit)))
        return pa.table(
            {
                "unit": [unit],
                "rows": [n],
                "skipped": [json.dumps(meta["skipped"])],
                "meta": [json.dumps(table_metadata(table))],  # = shard_metadata() of the shard
                "seconds": [time.perf_counter() - started],
            }
        )


def _manifest(
    config: PrepareConfig, out: str, dataset: str, fingerprint: dict[str, Any], units: int, complete: bool
) -> Manifest:
    return Manifest(
        name=storage.name(out),
        dataset=dataset,
        source=config.source.tag,
        vae={},
        text_encoder={},
        resolutions=list(config.resolutions),
        tensors={},
        prepare=fingerprint,
        units=units,
        complete=complete,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def _finalise(
    config: PrepareConfig, out: str, dataset: str, fingerprint: dict[str, Any], units: int,
    shards: dict[int, dict[str, Any]],
) -> Manifest:
    """The complete manifest, from every shard's footer metadata (``unit -> metadata``: returned by
    the actors for shards written now, read through storage for shards of earlier runs)."""
    manifest = _manifest(config, out, dataset, fingerprint, units, complete=True)
    skipped: Counter[str] = Counter()
    rows = 0
    for unit in sorted(shards):
        meta = shards[unit]
        manifest.shards.append({"file": shard_name(unit), "rows": meta["rows"]})
        skipped.update(meta["skipped"])
        rows += meta["rows"]
        manifest.vae, manifest.text_encoder, manifest.tensors = meta["vae"], meta["text_encoder"], meta["tensors"]
    if len(manifest.shards) != units:
        raise RuntimeError(f"{out}: {len(manifest.shards)} shards for {units} units; re-run prepare to finish")
    manifest.rows = {config.source.tag: rows}
    manifest.skipped = dict(skipped)
    return manifest


def _remove_stale_temps(out: str) -> None:
    """Delete temporary files of writes that died before their rename (local or shared disks only:
    an object-store upload leaves nothing behind)."""
    if storage.is_uri(out):
        return
    for entry in os.scandir(out):
        if entry.name.startswith(".") and entry.name.endswith(".tmp") and entry.is_file():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)


def _diff(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys)
