"""Where images and captions come from: one interface, one class per on-disk layout.

A source does two things:
- ``refs()``: list every item as a small JSON-able dict with a stable, unique ``key``, in a
  deterministic order. ``prepare`` cuts this list into fixed units (one shard each), which is
  what makes an interrupted run resumable without duplicates.
- ``load(refs)``: yield ``RawItem(key, image, caption)`` for those refs (image as encoded bytes
  or a Pillow image; caption ``None`` when missing). Runs inside Ray Data tasks.

Layouts:
- ``folder``: images under a directory (recursive; jpg/jpeg/png/webp/bmp/gif) with a sidecar
  ``<stem>.txt`` caption, or a ``.jsonl`` / ``.csv`` index with a file column (``file``,
  ``file_name``, ``image`` or ``path``, relative to the index) and ``caption_column``.
- ``webdataset``: ``.tar`` shards (a file or a directory of them); members grouped by key (path up
  to the first dot of the basename), image from jpg/jpeg/png/webp, caption from ``txt`` or a
  ``json`` with ``caption`` / ``text``. Items are read by byte offset, no re-scan.
- ``parquet``: a file or directory of Parquet files with image bytes (binary, or a struct with a
  ``bytes`` field as in Hugging Face exports) and a caption column.
- ``demo_real`` / ``demo_synthetic``: see ``microdit.data.emoji`` and ``microdit.data.synthetic``.
"""

from __future__ import annotations

import bisect
import csv
import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pyarrow.parquet as pq
from PIL import Image

from microdit.config.data import SourceConfig
from microdit.errors import ConfigError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
_INDEX_FILE_COLUMNS = ("file", "file_name", "image", "path")


@dataclass
class RawItem:
    """One undecoded item: ``image`` is bytes or a Pillow image; ``caption`` None when missing."""

    key: str
    image: bytes | Image.Image | None
    caption: str | None
    skip: str | None = None  # a skip reason the source already knows (e.g. a blank render)


class Source(Protocol):
    def refs(self) -> list[dict[str, Any]]: ...

    def load(self, refs: list[dict[str, Any]]) -> Iterator[RawItem]: ...


class FolderSource:
    """Images in a directory tree with sidecar ``.txt`` captions, or listed by a jsonl/csv index."""

    def __init__(self, config: SourceConfig) -> None:
        path = Path(config.path).expanduser()
        index = Path(config.index).expanduser() if config.index else None
        if index is None and path.suffix in (".jsonl", ".csv"):
            index = path
        if index is not None and not index.is_file():
            raise ConfigError(f"source.index={str(index)!r}: file not found")
        if index is None and not path.is_dir():
            raise ConfigError(f"source.path={config.path!r}: not a directory (or a .jsonl/.csv index)")
        self.root = index.parent if index is not None else path
        self.index = index
        self.config = config

    def refs(self) -> list[dict[str, Any]]:
        if self.index is None:
            files = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())
            return [
                {"key": str(p.relative_to(self.root)), "file": str(p.relative_to(self.root))} for p in files
            ]
        refs = []
        for n, row in enumerate(self._index_rows()):
            file_col = next((c for c in _INDEX_FILE_COLUMNS if row.get(c)), None)
            if file_col is None:
                raise ConfigError(
                    f"{self.index}: row {n} has none of the file columns {list(_INDEX_FILE_COLUMNS)}"
                )
            key = str(row[self.config.id_column]) if self.config.id_column else str(row[file_col])
            refs.append(
                {"key": key, "file": str(row[file_col]), "caption": row.get(self.config.caption_column)}
            )
        return refs

    def _index_rows(self) -> list[dict[str, Any]]:
        text = self.index.read_text(encoding="utf-8")
        if self.index.suffix == ".csv":
            return list(csv.DictReader(text.splitlines()))
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def load(self, refs: list[dict[str, Any]]) -> Iterator[RawItem]:
        for ref in refs:
            file = self.root / ref["file"]
            image = file.read_bytes() if file.is_file() else None
            if "caption" in ref:
                caption = ref["caption"]
            else:
                sidecar = file.with_suffix(".txt")
                caption = sidecar.read_text(encoding="utf-8") if sidecar.is_file() else None
            yield RawItem(ref["key"], image, caption)


class WebDatasetSource:
    """WebDataset ``.tar`` shards; items are read by the byte offsets found while listing."""

    CAPTION_EXTS = ("txt", "json")
    IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")

    def __init__(self, config: SourceConfig) -> None:
        path = Path(config.path).expanduser()
        self.tars = sorted(path.glob("*.tar")) if path.is_dir() else [path]
        if not self.tars or not all(t.is_file() for t in self.tars):
            raise ConfigError(f"source.path={config.path!r}: no .tar files found")

    def refs(self) -> list[dict[str, Any]]:
        refs = []
        for tar_path in self.tars:
            groups: dict[str, dict[str, Any]] = {}
            with tarfile.open(tar_path, "r:") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    directory, _, base = member.name.rpartition("/")
                    stem, _, ext = base.partition(".")
                    key = f"{directory}/{stem}" if directory else stem
                    group = groups.setdefault(key, {"key": f"{tar_path.stem}/{key}", "tar": str(tar_path)})
                    ext = ext.lower()
                    if ext in self.IMAGE_EXTS:
                        group["image"] = [member.offset_data, member.size]
                    elif ext in self.CAPTION_EXTS:
                        group["caption"] = [member.offset_data, member.size, ext]
            refs.extend(groups.values())
        return refs

    def load(self, refs: list[dict[str, Any]]) -> Iterator[RawItem]:
        handles: dict[str, Any] = {}
        try:
            for ref in refs:
                handle = handles.get(ref["tar"]) or handles.setdefault(ref["tar"], open(ref["tar"], "rb"))
                image = self._read(handle, ref["image"]) if "image" in ref else None
                caption = None
                if "caption" in ref:
                    offset, size, ext = ref["caption"]
                    text = self._read(handle, (offset, size)).decode("utf-8", errors="replace")
                    caption = text if ext == "txt" else _json_caption(text)
                yield RawItem(ref["key"], image, caption)
        finally:
            for handle in handles.values():
                handle.close()

    @staticmethod
    def _read(handle: Any, where: tuple[int, int] | list[int]) -> bytes:
        handle.seek(where[0])
        return handle.read(where[1])


def _json_caption(text: str) -> str | None:
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return None
    return (data.get("caption") or data.get("text")) if isinstance(data, dict) else None


class ParquetSource:
    """Parquet files with an image-bytes column and a caption column (Hugging Face exports)."""

    def __init__(self, config: SourceConfig) -> None:
        path = Path(config.path).expanduser()
        self.files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
        if not self.files or not all(f.is_file() for f in self.files):
            raise ConfigError(f"source.path={config.path!r}: no .parquet files found")
        self.config = config
        names = pq.read_schema(self.files[0]).names
        for field_name in ("image_column", "caption_column"):
            if getattr(config, field_name) not in names:
                raise ConfigError(
                    f"source.{field_name}={getattr(config, field_name)!r}: not a column of "
                    f"{self.files[0].name}; columns: {names}"
                )

    def refs(self) -> list[dict[str, Any]]:
        refs = []
        for file in self.files:
            if self.config.id_column:
                ids = pq.read_table(file, columns=[self.config.id_column]).column(0).to_pylist()
            else:
                ids = [f"{file.stem}/{row}" for row in range(pq.ParquetFile(file).metadata.num_rows)]
            refs.extend({"key": str(key), "file": str(file), "row": row} for row, key in enumerate(ids))
        return refs

    def load(self, refs: list[dict[str, Any]]) -> Iterator[RawItem]:
        by_file: dict[str, list[dict[str, Any]]] = {}
        for ref in refs:
            by_file.setdefault(ref["file"], []).append(ref)
        columns = [self.config.image_column, self.config.caption_column]
        for file, file_refs in by_file.items():
            table = _read_rows(file, [r["row"] for r in file_refs], columns)
            images = table.column(0).to_pylist()
            captions = table.column(1).to_pylist()
            for ref, image, caption in zip(file_refs, images, captions):
                if isinstance(image, dict):  # HF `Image` feature: {"bytes": ..., "path": ...}
                    image = image.get("bytes")
                yield RawItem(ref["key"], image, caption)


def _read_rows(file: str, rows: list[int], columns: list[str]) -> Any:
    """Rows of a Parquet file, reading only the row groups that hold them."""
    parquet = pq.ParquetFile(file)
    starts = [0]
    for g in range(parquet.num_row_groups):
        starts.append(starts[-1] + parquet.metadata.row_group(g).num_rows)
    groups = sorted({bisect.bisect_right(starts, row) - 1 for row in rows})
    table = parquet.read_row_groups(groups, columns=columns)
    offsets, seen = {}, 0
    for g in groups:
        offsets[g] = seen - starts[g]
        seen += starts[g + 1] - starts[g]
    return table.take([row + offsets[bisect.bisect_right(starts, row) - 1] for row in rows])


def open_source(config: SourceConfig, image_size: int = 64) -> Source:
    """The ``Source`` for ``config.kind``; demo sources draw at 2x ``image_size`` (the largest resolution)."""
    if config.kind == "folder":
        return FolderSource(config)
    if config.kind == "webdataset":
        return WebDatasetSource(config)
    if config.kind == "parquet":
        return ParquetSource(config)
    if config.kind == "demo_real":
        from microdit.data.emoji import EmojiSource

        return EmojiSource(config, image_size)
    from microdit.data.synthetic import SyntheticSource

    return SyntheticSource(config, image_size)


def default_dataset_name(config: SourceConfig) -> str:
    """``config.dataset`` or the source path's stem (``/x/cc12m.tar`` -> ``cc12m``)."""
    if config.dataset:
        return config.dataset
    if config.kind.startswith("demo_"):
        return config.kind
    return Path(config.path).expanduser().resolve().stem or "images"
