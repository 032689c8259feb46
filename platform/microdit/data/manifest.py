"""Where prepared sets live and what their ``manifest.json`` says.

A prepared set is a directory (a prefix on an object store): ``manifest.json`` +
``shard-NNNNNN.parquet`` files (format in ``microdit.data.schema``), read and written through
``microdit.storage``, so a set may sit on a local or shared disk or under an ``s3://`` (``gs://``,
...) URI. A set location is a plain ``str``: an absolute local path or a URI.

A set reference is a URI (kept as given), a path (absolute, relative to the working directory, or
``~``; made absolute), or a bare name (no ``/``, not starting with ``.`` or ``~``) resolved under
the data root: ``$MICRODIT_DATA_ROOT`` when set (a directory or a URI), else ``<storage root>/data``
(``$MICRODIT_ROOT``, default ``~/microdit``): ``resolve_set_path("demo_real")``. Resolve once, in
the driver, and hand workers the resolved location (a worker's environment may differ).

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
from typing import Any

from microdit import storage
from microdit.data.schema import SCHEMA_VERSION, TEXT_EMB, latent_column
from microdit.errors import ConfigError

DATA_ROOT_ENV = "MICRODIT_DATA_ROOT"
MANIFEST = "manifest.json"


def data_root() -> str:
    """Where bare set names live: ``$MICRODIT_DATA_ROOT`` (resolved; a path or a URI), else
    ``<storage root>/data`` (``$MICRODIT_ROOT``, default ``~/microdit``)."""
    configured = os.environ.get(DATA_ROOT_ENV)
    return storage.resolve(configured) if configured else storage.join(storage.root(), "data")


def resolve_set_path(ref: str | os.PathLike) -> str:
    """A set reference -> its location (module docstring): a bare name -> ``data_root()/name``;
    a URI -> unchanged; a path -> absolute (``~`` expanded, relative to the working directory)."""
    text = os.fspath(ref).strip()
    if not text:
        raise ConfigError("empty data set reference: give a directory path, a URI or a set name")
    is_bare = (
        not storage.is_uri(text) and os.sep not in text and "/" not in text and not text.startswith((".", "~"))
    )
    return storage.join(data_root(), text) if is_bare else storage.resolve(text)


def manifest_location(ref: str | os.PathLike) -> str:
    """The location of a set's ``manifest.json`` (``ref`` as for ``resolve_set_path``)."""
    return storage.join(resolve_set_path(ref), MANIFEST)


def set_exists(ref: str | os.PathLike) -> bool:
    """True when the set has a ``manifest.json`` (complete or not)."""
    return storage.is_file(manifest_location(ref))


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


def load_manifest(ref: str | os.PathLike) -> Manifest:
    """Read ``<set>/manifest.json`` (``ref``: the set's location, its manifest file, or a bare name)."""
    location = resolve_set_path(ref)
    if storage.name(location) == MANIFEST:
        location = storage.parent(location)
    file = storage.join(location, MANIFEST)
    try:
        data = json.loads(storage.read_text(file))
    except FileNotFoundError:
        raise ConfigError(f"no prepared set at {location}: {MANIFEST} is missing; run `microdit prepare`") from None
    except OSError as err:  # e.g. a missing bucket or no access
        raise ConfigError(f"cannot read the prepared set at {location}: {err}") from err
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ConfigError(
            f"{file}: schema_version {version} is not supported (expected {SCHEMA_VERSION}); "
            "re-run `microdit prepare` with this version"
        )
    return Manifest.from_dict(data)


def save_manifest(location: str | os.PathLike, manifest: Manifest) -> None:
    """Write ``<location>/manifest.json`` atomically (``storage.write_text``: temp + rename on a
    disk, one upload to an object store), so readers never see half a file."""
    storage.write_text(
        storage.join(os.fspath(location), MANIFEST), json.dumps(manifest.to_dict(), indent=2, sort_keys=True)
    )
