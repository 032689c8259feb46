"""The data half: ``prepare`` (images -> latent shards) and the mixed stream training reads.

Public API (import from the modules; this package imports nothing heavy on its own):

- ``microdit.data.manifest``: ``resolve_set_path(ref) -> str``, ``set_exists(ref) -> bool``,
  ``load_manifest(ref) -> Manifest``, ``data_root() -> str``; a set reference is a directory, an
  object-store URI (``s3://…``) or a bare name under the data root (``$MICRODIT_DATA_ROOT``, else
  ``<storage root>/data``). Locations are plain strings, read and written via ``microdit.storage``.
- ``microdit.data.reader``: ``read_set(path, columns=None, resolution=None) -> dict`` (evaluation).
- ``microdit.data.demo``: ``ensure_demo_sets(root=None, resolution=32, size="default") -> dict[str, str]``.
- ``microdit.data.prepare``: ``prepare(PrepareConfig) -> PrepareSummary`` (the Ray Data pipeline).
- ``microdit.data.stream``: ``MixedStream(DataMixConfig, resolution, batch_size, rank, world_size, state)``.

Files: ``schema`` (shard format), ``manifest``, ``reader``, ``images`` (decode + crop),
``sources`` (folder / WebDataset / Parquet), ``emoji`` + ``synthetic`` (demo sources),
``encoders`` (VAE / text), ``prepare``, ``demo``, ``plan`` (the stream's order, pure),
``source_stream`` (one source read ahead by Ray Data), ``stream`` (the mix).
"""
