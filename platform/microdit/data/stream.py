"""The mixed real/synthetic stream a Ray Train worker iterates: exact fraction, exact resume.

Use inside the train function (each worker builds its own)::

    stream = MixedStream(recipe.data, resolution=256, batch_size=per_worker_batch,
                         rank=ctx.get_world_rank(), world_size=ctx.get_world_size(),
                         state=checkpoint_state.get("data"))
    for batch in stream:          # endless; batch["latent"] (B, C, h, w) float32, ...
        ...
        checkpoint_state["data"] = stream.state_dict()   # position after this batch

Why not ``TorchTrainer(datasets=...)`` + ``get_dataset_shard``: Ray 2.60 has no dataset
checkpointing and ``streaming_split`` hands blocks to workers in a non-deterministic order, so
a restarted run could not find its place. Here the order is ours and a pure function of the
config (``microdit.data.plan``): per source and pass, a seeded shard permutation dealt
round-robin to ranks, shards grouped into windows of >= ``shuffle_buffer`` rows, rows permuted
inside a window. A position is, per source, ``(pass, offset)`` plus the rows and synthetic rows
delivered so far; ``state_dict()`` returns it after the last yielded batch (JSON-safe), and a
stream built with ``state=`` continues with the very next row: no duplicate, no gap. A
restart must keep seed, shuffle_buffer, world size and the sets (checked; a mismatch is a
``ConfigError``); batch size and even the fraction may change (the Bresenham target self-corrects).

``config.real`` / ``config.synthetic`` are set references (``microdit.data.manifest``): a local
or shared directory, an object-store URI (``s3://…``; read through ``microdit.storage``) or a bare
name under the data root. Give workers resolved locations: a bare name resolves with the
environment of the process that builds the stream.

Small sources (the demo sets) are read once per worker process and served from memory, with the
same windows and permutations (``microdit.data.source_stream``: a Ray Data execution costs
seconds to start and its background threads slow the training step while it runs). For larger
sources Ray Data does the I/O: per source, Ray tasks read whole
windows (only the needed columns) in the background, in order; the worker applies the window's
permutation while copying rows out of the fixed-size-binary buffers (viewed with
``np.frombuffer``, no per-row parsing) into the output tensors, the one copy it must make
anyway. Memory: each source keeps about ``prefetch_windows + 2`` windows in the object store
per worker, e.g. 4 x 4096 rows x 166 KB = 2.7 GB per source per worker at the real recipe's
row size (lower ``shuffle_buffer`` to trade shuffle quality for memory).

Mixing: batch ``k`` takes ``floor(n_k f) - floor(n_{k-1} f)`` synthetic rows (n = rows so far),
so after every batch exactly floor(n f) of the worker's n rows were synthetic, and any run of
consecutive batches holding k rows has k f ± 1 synthetic rows; f = 0 and f = 1 use one source. Inside a batch the real rows come first, then the synthetic ones (split
micro-batches with a stride, ``batch[i::k]``, to keep the mix in each). When a source's pass
ends, its next seeded pass starts (different order and rank assignment) and a warning says how
many times its rows have now been repeated; ``passes()`` reports it for logging.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from microdit.config.data import DataMixConfig
from microdit.data.manifest import Manifest, load_manifest
from microdit.data.plan import synthetic_rows
from microdit.data.schema import ID, TEXT_EMB, TEXT_LEN, latent_column
from microdit.data.source_stream import SourceStream
from microdit.errors import ConfigError

log = logging.getLogger(__name__)
STATE_VERSION = 1


class MixedStream:
    """Endless torch batches mixing two prepared sets at an exact fraction (module docstring).

    Yields ``latent`` (B, C, h, w) float32, ``text_emb`` (B, L, Dy) float32, ``text_mask`` (B, L)
    bool (True = real token), ``is_synthetic`` (B,) bool, and ``id`` (list of B str) when
    ``with_ids``. ``dtype=torch.float16`` yields the stored fp16 instead: half the bytes, and the
    cast then happens on the GPU (on CPU the fp16 -> fp32 cast is the stream's largest cost).
    ``in_memory_max_bytes``: a source whose needed columns fit is served from memory instead of
    Ray Data (default ``source_stream.IN_MEMORY_MAX_BYTES``; 0 always streams). Same rows, same order.
    ``pin_memory``: the batch tensors are allocated in page-locked memory (CUDA's caching host
    allocator reuses the blocks), so ``.to("cuda", non_blocking=True)`` is a real asynchronous copy.
    """

    def __init__(
        self,
        config: DataMixConfig,
        resolution: int,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        state: dict[str, Any] | None = None,
        with_ids: bool = False,
        dtype: torch.dtype = torch.float32,
        in_memory_max_bytes: int | None = None,
        pin_memory: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size={batch_size}: must be >= 1 per worker")
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank={rank} must be in [0, world_size={world_size})")
        if dtype not in (torch.float32, torch.float16):
            raise ConfigError(f"dtype={dtype}: MixedStream yields float32 (default) or float16 tensors")
        self.config, self.batch_size, self.with_ids, self.dtype = config, batch_size, with_ids, dtype
        self.pin_memory = pin_memory
        self.rank, self.world_size = rank, world_size
        self.fraction = config.fraction
        wanted = {"real": self.fraction < 1, "synthetic": self.fraction > 0}
        refs = {name: getattr(config, name) for name, used in wanted.items() if used}
        manifests = {name: load_manifest(ref) for name, ref in refs.items()}
        self._check_compatible(manifests, resolution)
        first = next(iter(manifests.values()))
        self.latent_shape = first.latent_shape(resolution)
        self.text_shape = first.text_shape
        self.vae, self.text_encoder = first.vae, first.text_encoder
        self._latent_col = latent_column(resolution)
        columns = [ID, self._latent_col, TEXT_EMB, TEXT_LEN]

        positions = {name: (0, 0) for name in refs}
        self.rows = self.synthetic_rows = 0
        if state is not None:
            positions = self._restore(state, refs, manifests)
        self.sources = {
            name: SourceStream(
                name,
                refs[name],
                manifests[name],
                columns,
                config,
                rank,
                world_size,
                positions[name],
                in_memory_max_bytes=in_memory_max_bytes,
            )
            for name in refs
        }

    def _check_compatible(self, manifests: dict[str, Manifest], resolution: int) -> None:
        shapes = {}
        for name, manifest in manifests.items():
            if not manifest.complete:
                raise ConfigError(
                    f"data.{name}: set {manifest.name!r} is incomplete; finish `microdit prepare`"
                )
            if manifest.source != name:
                log.warning(
                    "data.%s points at set %r whose rows are tagged %r", name, manifest.name, manifest.source
                )
            shapes[name] = (
                manifest.latent_shape(resolution),
                manifest.text_shape,
                manifest.vae.get("name"),
                manifest.text_encoder.get("name"),
            )
        if len(set(shapes.values())) > 1:
            raise ConfigError(
                f"data.real and data.synthetic were encoded differently (latent shape, caption shape, "
                f"VAE, text encoder): {shapes}; prepare both with the same encoders"
            )

    def _restore(self, state: dict[str, Any], refs: dict[str, str], manifests: dict[str, Manifest]) -> dict:
        expected = {
            "version": STATE_VERSION,
            "seed": self.config.seed,
            "world_size": self.world_size,
            "rank": self.rank,
            "shuffle_buffer": self.config.shuffle_buffer,
        }
        for key, value in expected.items():
            if state.get(key) != value:
                raise ConfigError(
                    f"saved data position has {key}={state.get(key)!r} but this stream has {value!r}; "
                    "exact resume needs the same seed, shuffle_buffer, world size and rank"
                )
        positions = {}
        for name in refs:
            saved = state["sources"].get(name)
            if saved is None:  # the fraction changed from 0 or 1: this source starts fresh
                positions[name] = (0, 0)
                continue
            if saved["rows_total"] != manifests[name].rows_total:
                raise ConfigError(
                    f"data.{name}: set now has {manifests[name].rows_total} rows, the checkpoint "
                    f"saw {saved['rows_total']}; exact resume needs the same set"
                )
            positions[name] = (int(saved["pass"]), int(saved["offset"]))
        self.rows, self.synthetic_rows = int(state["rows"]), int(state["synthetic_rows"])
        return positions

    def state_dict(self) -> dict[str, Any]:
        """The exact position after the last yielded batch (JSON-serialisable)."""
        return {
            "version": STATE_VERSION,
            "seed": self.config.seed,
            "world_size": self.world_size,
            "rank": self.rank,
            "shuffle_buffer": self.config.shuffle_buffer,
            "rows": self.rows,
            "synthetic_rows": self.synthetic_rows,
            "sources": {
                name: {"pass": s.pass_index, "offset": s.offset, "rows_total": sum(r for _, r in s.shards)}
                for name, s in self.sources.items()
            },
        }

    def passes(self) -> dict[str, int]:
        """Completed passes per source (0 until a source's rows start repeating)."""
        return {name: s.pass_index for name, s in self.sources.items()}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            yield self.next_batch()

    def next_batch(self) -> dict[str, Any]:
        b = self.batch_size
        n_syn = synthetic_rows(self.rows, self.synthetic_rows, b, self.fraction)
        if "real" not in self.sources:
            n_syn = b
        elif "synthetic" not in self.sources:
            n_syn = 0
        pieces = (self.sources["real"].take(b - n_syn) if b - n_syn else []) + (
            self.sources["synthetic"].take(n_syn) if n_syn else []
        )
        latent = torch.empty((b, *self.latent_shape), dtype=self.dtype, pin_memory=self.pin_memory)  # (B, C, h, w)
        text = torch.empty((b, *self.text_shape), dtype=self.dtype, pin_memory=self.pin_memory)  # (B, L, Dy)
        latent_np, text_np = latent.numpy(), text.numpy()  # views: rows are cast straight into them
        lengths = np.empty((b,), dtype=np.int64)
        ids: list[str] = []
        row = 0
        for piece in pieces:
            k = piece.num_rows
            piece.copy_tensor(self._latent_col, self.latent_shape, latent_np[row : row + k])  # (k, C, h, w)
            piece.copy_tensor(TEXT_EMB, self.text_shape, text_np[row : row + k])  # (k, L, Dy)
            lengths[row : row + k] = piece.column(TEXT_LEN).to_numpy()
            if self.with_ids:
                ids.extend(piece.column(ID).to_pylist())
            row += k
        is_synthetic = torch.zeros(b, dtype=torch.bool)
        is_synthetic[b - n_syn :] = True
        text_mask = torch.arange(self.text_shape[0])[None, :] < torch.from_numpy(lengths)[:, None]  # (B, L)
        self.rows += b
        self.synthetic_rows += n_syn
        batch = {"latent": latent, "text_emb": text, "text_mask": text_mask, "is_synthetic": is_synthetic}
        if self.with_ids:
            batch["id"] = ids
        return batch

    def close(self) -> None:
        """Stop the read-ahead threads (they are daemons; closing just frees resources sooner)."""
        for source in self.sources.values():
            source.close()

    def __enter__(self) -> MixedStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
