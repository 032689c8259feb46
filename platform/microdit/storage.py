"""Where things live: one storage root, a local/shared path or an object-store URI.

Runs, checkpoints, final weights, sweep state and prepared data sets all live under one root:
``$MICRODIT_ROOT`` (or ``microdit --root``), default ``~/microdit``, never the working directory
(a ``ray job submit`` runs in a temporary copy of it). The root may be a local or shared (NFS)
directory or a URI (``s3://bucket/prefix``, ``gs://…``, ``abfs://…``) that ``pyarrow.fs``
understands; S3-compatible stores are reached through the standard ``AWS_ENDPOINT_URL``.

A location is a plain string: an absolute local path or a URI. ``resolve`` turns a user value into
one, once, in the driver (``~`` and relative paths expanded; URIs untouched, never passed through
``os.path.abspath``, which would make ``s3://b/x`` into ``<cwd>/s3:/b/x``); workers receive
resolved locations in their config and never re-resolve them. Everything else in the package
reads and writes a configured location through the functions here.

Why by hand: ``pyarrow.fs`` gives the filesystems but no location type that keeps ``s3://`` and
``/local`` paths apart, no atomic write on local disks and no one-call read/write of small files.
Atomic writes: on a local or shared disk a temporary name in the same directory, then a rename;
on an object store one upload (an object appears whole or not at all).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import posixpath
import re
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import pyarrow.fs as pafs

ROOT_ENV = "MICRODIT_ROOT"
DEFAULT_ROOT = "~/microdit"
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")


def is_uri(location: str | os.PathLike) -> bool:
    """True for ``scheme://…`` locations other than ``file://`` (which is a local path)."""
    match = _SCHEME.match(os.fspath(location))
    return bool(match) and match.group(1).lower() != "file"


def resolve(location: str | os.PathLike) -> str:
    """A user-given location as an absolute local path or a URI (driver side, once)."""
    text = os.fspath(location).strip()
    if not text:
        raise ValueError("empty storage location: give a directory path or a URI such as s3://bucket/prefix")
    if is_uri(text):
        return text.rstrip("/") if not text.endswith("://") else text
    if text.lower().startswith("file://"):
        text = text[len("file://"):]
    return os.path.abspath(os.path.expanduser(text))


def root() -> str:
    """The storage root: ``$MICRODIT_ROOT`` or ``~/microdit``, resolved."""
    return resolve(os.environ.get(ROOT_ENV) or DEFAULT_ROOT)


def local_root() -> str:
    """A local directory for what must sit on a disk (e.g. the default SQLite MLflow store): the
    root when it is local, else ``~/microdit``."""
    configured = root()
    return configured if not is_uri(configured) else resolve(DEFAULT_ROOT)


def join(base: str, *parts: str) -> str:
    """``base/part/…`` for local paths and URIs alike (parts are relative, '/'-separated)."""
    cleaned = [p.strip("/") for p in parts if p and p.strip("/")]
    if is_uri(base):
        return posixpath.join(base.rstrip("/"), *cleaned) if cleaned else base
    return os.path.join(base, *cleaned)


def name(location: str) -> str:
    """The last component of a location."""
    return posixpath.basename(location.rstrip("/")) if is_uri(location) else os.path.basename(location.rstrip(os.sep))


def parent(location: str) -> str:
    if is_uri(location):
        return posixpath.dirname(location.rstrip("/"))
    return os.path.dirname(location.rstrip(os.sep))


@functools.lru_cache(maxsize=32)
def _filesystem_for(prefix: str) -> pafs.FileSystem:
    return pafs.FileSystem.from_uri(prefix)[0]


def filesystem(location: str) -> tuple[pafs.FileSystem, str]:
    """The ``pyarrow.fs`` filesystem of a location and the path inside it (cached per bucket)."""
    if not is_uri(location):
        return pafs.LocalFileSystem(), os.path.abspath(location)
    match = _SCHEME.match(location)
    rest = location[match.end():]
    bucket = rest.split("/", 1)[0]
    fs = _filesystem_for(f"{match.group(0)}{bucket}")
    return fs, rest.rstrip("/")


def _info(location: str) -> pafs.FileInfo:
    fs, path = filesystem(location)
    return fs.get_file_info(path)


def exists(location: str) -> bool:
    return _info(location).type != pafs.FileType.NotFound


def is_file(location: str) -> bool:
    return _info(location).type == pafs.FileType.File


def file_stamp(location: str) -> tuple[int, int]:
    """(size, mtime in ns) of a file: a cache key that changes when the file is rewritten."""
    info = _info(location)
    if info.type != pafs.FileType.File:
        raise FileNotFoundError(location)
    return int(info.size or 0), int(info.mtime_ns or 0)


def list_names(location: str) -> list[str]:
    """Names of the entries directly under a directory (sorted; [] when it does not exist)."""
    fs, path = filesystem(location)
    selector = pafs.FileSelector(path, allow_not_found=True, recursive=False)
    return sorted(posixpath.basename(info.path.rstrip("/")) for info in fs.get_file_info(selector))


def makedirs(location: str) -> None:
    """Create a directory and its parents (object stores have no directories: nothing to do)."""
    if not is_uri(location):
        os.makedirs(location, exist_ok=True)


def read_bytes(location: str) -> bytes:
    fs, path = filesystem(location)
    with fs.open_input_stream(path) as f:
        return f.read()


def read_text(location: str) -> str:
    return read_bytes(location).decode("utf-8")


def read_json(location: str) -> Any:
    return json.loads(read_text(location))


def open_input_file(location: str):
    """A random-access file (what ``pyarrow.parquet.ParquetFile`` and ``torch.load`` read)."""
    fs, path = filesystem(location)
    return fs.open_input_file(path)


def write_bytes(location: str, data: bytes) -> None:
    """Write a whole file atomically: readers see the old file or the new one, never a part."""
    if is_uri(location):
        fs, path = filesystem(location)
        with fs.open_output_stream(path) as f:  # visible only once complete
            f.write(data)
        return
    with atomic_local_output(location) as tmp, open(tmp, "wb") as f:  # closed, then renamed
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_text(location: str, text: str) -> None:
    write_bytes(location, text.encode("utf-8"))


def write_json(location: str, data: Any) -> None:
    write_text(location, json.dumps(data, indent=2, sort_keys=True))


@contextlib.contextmanager
def atomic_local_output(location: str) -> Iterator[str]:
    """A local file path to write to; on success it becomes ``location`` atomically (renamed on a
    local disk, uploaded in one PUT to an object store). For writers that need a path (Parquet,
    ``torch.save``)."""
    if is_uri(location):
        with tempfile.TemporaryDirectory(prefix="microdit-upload-") as tmp:
            path = os.path.join(tmp, name(location))
            yield path
            upload_file(path, location)
        return
    directory = os.path.dirname(location) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(location)}.", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, location)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def upload_file(local_path: str, location: str) -> None:
    """Copy a local file to ``location`` (atomically, see ``write_bytes``), streaming."""
    if not is_uri(location):
        with atomic_local_output(location) as tmp:
            shutil.copyfile(local_path, tmp)
        return
    fs, path = filesystem(location)
    pafs.copy_files(local_path, path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


@contextlib.contextmanager
def local_copy(location: str) -> Iterator[str]:
    """A local path holding the file or directory at ``location``: the location itself when local,
    else a temporary download removed on exit."""
    if not is_uri(location):
        yield location
        return
    fs, path = filesystem(location)
    with tempfile.TemporaryDirectory(prefix="microdit-download-") as tmp:
        target = os.path.join(tmp, name(location))
        if fs.get_file_info(path).type == pafs.FileType.Directory:
            os.makedirs(target)
            pafs.copy_files(path, target, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        else:
            with fs.open_input_stream(path) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, length=16 * 2**20)
        yield target


def delete(location: str) -> None:
    """Remove a file or a whole directory (missing is fine)."""
    fs, path = filesystem(location)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif info.type == pafs.FileType.File:
        fs.delete_file(path)
