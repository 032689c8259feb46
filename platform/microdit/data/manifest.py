"""Where prepared sets live and what their ``manifest.json`` says.

A prepared set is a directory: ``manifest.json`` + ``shard-NNNNNN.parquet`` files (format in
``microdit.data.schema``). A set reference is a path (absolute, relative, or ``~``), or a bare
name (no path separator) resolved under ``$MICRODIT_DATA_ROOT`` (default
``~/.cache/microdit/data``): ``resolve_set_path("demo_real")``.

The manifest records everything a consumer needs without opening a shard: the VAE (``pixels``
or hub id / path, scaling and shift factor, so evaluation can decode latents), the text encoder
(id / path, max token length L, width Dy), resolutions and tensor shapes, rows per source,
skipped items by reason, the shard list with row counts, the creating ``prepare`` config (so a
re-run with other settings is refused instead of mixing encodings) and ``complete``: false while
a prepare is running or died, true once every shard is written.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from microdit.data.schema import SCHEMA_VERSION, TEXT_EMB, latent_column
from microdit.errors import ConfigError

DATA_ROOT_ENV = "MICRODIT_DATA_ROOT"
MANIFEST = "manifest.json"


def data_root() -> Path:
    """``$MICRODIT_DATA_ROOT`` or ``~/.cache/microdit/data``."""
    return Path(os.environ.get(DATA_ROOT_ENV) or "~/.cache/microdit/data").expanduser()


def resolve_set_path(ref: str | os.PathLike) -> Path:
    """A set reference -> its directory. Bare names resolve under ``data_root()``."""
    text = os.fspath(ref)
    if not text:
        raise ConfigError("empty data set reference: give a directory path or a set name")
    is_bare = os.sep not in text and "/" not in text and not text.startswith((".", "~"))
    return (data_root() / text) if is_bare else Path(text).expanduser()


@dataclass
class Manifest:
    """The JSON description of one prepared set (see the module docstring)."""

    name: str
    dataset: str
    source: str  # real | synthetic: what every row of this set is tagged
    vae: dict[
        str, Any
    ]  # name, kind (pixels | autoencoder_kl), scaling_factor, shift_factor, channels, downsample
    text_encoder: dict[str, Any]  # name, path, kind, max_length (L), dim (Dy)
    resolutions: list[int]
    tensors: dict[str, dict[str, Any]]  # column -> {shape, dtype}
    prepare: dict[str, Any]  # the PrepareConfig that made the set (resume compatibility)
    shards: list[dict[str, Any]] = field(default_factory=list)  # [{file, rows}], zero-row shards included
    rows: dict[str, int] = field(default_factory=dict)  # per source tag
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count
    units: int = 0  # planned shards
    complete: bool = False
    created: str = ""
    seconds: float = 0.0  # wall time of the prepare runs that wrote it
    schema_version: int = SCHEMA_VERSION

    @property
    def rows_total(self) -> int:
        return sum(self.rows.values())

    @property
    def max_length(self) -> int:
        return int(self.text_encoder["max_length"])

    @property
    def caption_dim(self) -> int:
        return int(self.text_encoder["dim"])

    def latent_shape(self, resolution: int) -> tuple[int, int, int]:
        column = latent_column(resolution)
        if column not in self.tensors:
            raise ConfigError(
                f"set {self.name!r} has no latents at {resolution} px; it has {self.resolutions}"
            )
        return tuple(self.tensors[column]["shape"])

    @property
    def text_shape(self) -> tuple[int, int]:
        return tuple(self.tensors[TEXT_EMB]["shape"])

    def data_shards(self) -> list[dict[str, Any]]:
        """Shards holding at least one row, in file-name order."""
        return [s for s in self.shards if s["rows"] > 0]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["rows_total"] = self.rows_total
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def load_manifest(path: str | os.PathLike) -> Manifest:
    """Read ``<set>/manifest.json`` (``path`` may be the set directory, the file, or a bare name)."""
    directory = resolve_set_path(path)
    file = directory if directory.name == MANIFEST else directory / MANIFEST
    if not file.is_file():
        raise ConfigError(f"no prepared set at {file.parent}: {MANIFEST} is missing; run `microdit prepare`")
    data = json.loads(file.read_text())
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ConfigError(
            f"{file}: schema_version {version} is not supported (expected {SCHEMA_VERSION}); "
            "re-run `microdit prepare` with this version"
        )
    return Manifest.from_dict(data)


def save_manifest(directory: Path, manifest: Manifest) -> None:
    """Write the manifest atomically (temp + rename), so readers never see half a file."""
    tmp = directory / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest.to_dict(), indent=2, sort_keys=True))
    os.replace(tmp, directory / MANIFEST)
