"""One live process per sweep or training run name on a machine: a second one is refused, by name.

Two ``microdit sweep quickstart`` started at once on one machine would drive one Tune experiment
directory, one Optuna study and one MLflow parent run from two processes, and corrupt all three;
two ``microdit train demo`` would resume and checkpoint the same Ray Train run. ``held_exclusively``
takes an operating-system file lock (``filelock``, released by the kernel if the process dies, so
a crash never leaves a stale lock behind) named after the run's storage location, for as long as
the run lasts; a second process asking for it gets a ``ConfigError`` naming the run, the process
that holds it and what to do. Distinct names never share a lock.

The lock files live in the machine's temp directory (``<tmp>/microdit-locks/``), not beside the
run: the storage root may be an object store or a network file system, where file locks do not
exist or are not reliable. The guard is therefore per machine, the scope of the problem it solves
(runs from two machines go through a cluster, which queues them).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import tempfile
import time
from collections.abc import Iterator

from microdit.errors import ConfigError

LOCK_DIR = "microdit-locks"


def lock_path(kind: str, location: str) -> str:
    """The lock file of one run: its kind and a digest of its storage location (any path or URI)."""
    digest = hashlib.sha256(location.encode()).hexdigest()[:20]
    directory = os.path.join(tempfile.gettempdir(), LOCK_DIR)
    os.makedirs(directory, exist_ok=True)
    return os.path.join(directory, f"{kind}-{digest}.lock")


@contextlib.contextmanager
def held_exclusively(kind: str, name: str, location: str, hint: str) -> Iterator[None]:
    """Hold the lock of run ``name`` (a ``kind``: sweep, train) stored at ``location`` while the block
    runs; raise ``ConfigError`` at once if another live process holds it (``hint``: what to do)."""
    from filelock import FileLock, Timeout

    path = lock_path(kind, location)
    lock = FileLock(path, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise ConfigError(f"{kind} {name!r} is already running on this machine ({_owner(path)}; its files are "
                          f"at {location}): two processes would corrupt one run. {hint}") from None
    try:
        with open(path + ".owner", "w") as handle:
            json.dump({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}, handle)
        yield
    finally:
        lock.release()


def _owner(path: str) -> str:
    """Who holds the lock, as its holder recorded it (best effort: it may still be writing)."""
    try:
        with open(path + ".owner") as handle:
            owner = json.load(handle)
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner["since"]))
        return f"process {owner['pid']} on {owner['host']}, since {started}"
    except (OSError, ValueError, KeyError):
        return "another process"
