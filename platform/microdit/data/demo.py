"""The embedded default data: build the three demo sets once, quickly, offline.

``ensure_demo_sets(root=None, resolution=32, size="default")`` returns
``{"demo_real": str, "demo_real_heldout": str, "demo_synthetic": str}``: the sets' locations
under ``root`` (a local or shared directory or an object-store URI such as ``s3://bucket/data``;
default ``microdit.data.manifest.data_root()``), building whatever is missing with the
``prepare`` pipeline:

- ``demo_real``: OpenMoji emoji (``microdit.data.emoji``), captions = emoji names, tag real;
- ``demo_real_heldout``: a disjoint slice of the same seeded emoji order, the FID reference;
- ``demo_synthetic``: procedural compositions with exact captions (``microdit.data.synthetic``).

All use the ``pixels`` VAE (latent = image in [-1, 1], C = 3) and the packaged MiniLM text
encoder (Dy = 384) with ``max_length`` tokens (32: emoji names and the templates fit). It is
idempotent (a complete set with the same settings is left alone, an interrupted one is
finished, one with other settings is rebuilt: demo sets are cheap and derived), and safe
against concurrent callers (a file lock in ``root``; for an object-store root, a lock file in the
local temporary directory, which serialises the callers on one machine). Sizes: ``tiny`` (tests,
seconds), ``small`` (~30 s), ``default`` (every emoji not held out + 4,000 synthetic; about a minute on 2 cores).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

from microdit import storage
from microdit.cluster import connect_ray
from microdit.config.data import PrepareConfig, SourceConfig, TextEncoderConfig, VaeConfig
from microdit.data.emoji import available_emoji
from microdit.data.manifest import data_root, load_manifest, set_exists
from microdit.data.prepare import content_fingerprint, prepare, recorded_fingerprint
from microdit.errors import ConfigError

log = logging.getLogger(__name__)
REAL, HELDOUT, SYNTHETIC = "demo_real", "demo_real_heldout", "demo_synthetic"


@dataclass(frozen=True)
class DemoSize:
    real: int | None  # None = every emoji that is not held out
    heldout: int
    synthetic: int
    rows_per_shard: int


DEMO_SIZES = {
    "tiny": DemoSize(real=48, heldout=16, synthetic=48, rows_per_shard=8),
    "small": DemoSize(real=512, heldout=128, synthetic=512, rows_per_shard=32),
    "default": DemoSize(real=None, heldout=512, synthetic=4000, rows_per_shard=128),
}


def demo_configs(
    root: str,
    resolutions: Sequence[int],
    size: str = "default",
    seed: int = 0,
    max_length: int = 32,
    num_encoders: int = 1,
) -> dict[str, PrepareConfig]:
    """The three ``PrepareConfig`` of the demo sets under the location ``root`` (pure: no I/O)."""
    if size not in DEMO_SIZES:
        raise ConfigError(f"demo size {size!r} unknown; allowed: {', '.join(DEMO_SIZES)}")
    spec = DEMO_SIZES[size]
    total = available_emoji()
    real = spec.real if spec.real is not None else total - spec.heldout
    if spec.heldout + real > total:
        raise ConfigError(f"demo size {size!r} asks for {spec.heldout + real} emoji; only {total} exist")

    def config(name: str, source: SourceConfig) -> PrepareConfig:
        return PrepareConfig(
            source=source,
            out=storage.join(root, name),
            resolutions=tuple(resolutions),
            vae=VaeConfig(),
            text_encoder=TextEncoderConfig(max_length=max_length),
            rows_per_shard=spec.rows_per_shard,
            num_encoders=num_encoders,
            seed=seed,
        )

    return {
        REAL: config(
            REAL,
            SourceConfig(
                kind="demo_real",
                tag="real",
                dataset=REAL,
                demo_start=spec.heldout,
                demo_count=real,
                demo_seed=seed,
            ),
        ),
        HELDOUT: config(
            HELDOUT,
            SourceConfig(
                kind="demo_real",
                tag="real",
                dataset=HELDOUT,
                demo_start=0,
                demo_count=spec.heldout,
                demo_seed=seed,
            ),
        ),
        SYNTHETIC: config(
            SYNTHETIC,
            SourceConfig(
                kind="demo_synthetic",
                tag="synthetic",
                dataset=SYNTHETIC,
                demo_count=spec.synthetic,
                demo_seed=seed,
            ),
        ),
    }


def ensure_demo_sets(
    root: str | os.PathLike | None = None,
    resolution: int | Sequence[int] = 32,
    size: str = "default",
    seed: int = 0,
    max_length: int = 32,
    progress: bool = False,
) -> dict[str, str]:
    """Build the missing demo sets under ``root`` and return their locations (module docstring)."""
    import ray
    from filelock import FileLock

    resolutions = [resolution] if isinstance(resolution, int) else list(resolution)
    root = storage.resolve(root) if root is not None else data_root()
    storage.makedirs(root)
    connect_ray()  # RAY_ADDRESS or a loopback cluster; ships the package to encoder actors on any node
    # Two encoder actors halve the build on 2+ CPUs; tiny sets are dominated by actor start-up instead.
    encoders = 1 if size == "tiny" else max(1, min(2, int(ray.cluster_resources().get("CPU", 1))))
    configs = demo_configs(root, resolutions, size, seed, max_length, num_encoders=encoders)
    with FileLock(_lock_file(root)):
        for config in configs.values():
            out = config.out
            if set_exists(out) and _settings_differ(out, config):
                log.warning("demo set %s was built with other settings; rebuilding it", out)
                storage.delete(out)
            summary = prepare(config, progress=progress)
            if not summary.already_complete:
                log.info("%s", summary.format())
    return {name: config.out for name, config in configs.items()}


def _lock_file(root: str) -> str:
    """``root/.demo.lock`` on a disk; for an object store, a local file named after the root."""
    if not storage.is_uri(root):
        return storage.join(root, ".demo.lock")
    digest = hashlib.sha256(root.encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), f"microdit-demo-{digest}.lock")


def _settings_differ(out: str, config: PrepareConfig) -> bool:
    recorded = recorded_fingerprint(load_manifest(out).prepare)
    wanted = content_fingerprint(config)
    return any(recorded.get(key) != value for key, value in wanted.items())
