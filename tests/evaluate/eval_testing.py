"""A prepared set written directly (no Ray): the ``pixels`` VAE, so latents are the images themselves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def write_pixel_set(directory: Path, rows: int = 8, sizes: tuple[int, ...] = (16,), length: int = 4, dim: int = 32,
                    vae: dict | None = None) -> Path:
    """A prepared set with the ``pixels`` VAE: each latent is the image itself in [-1, 1], at each of ``sizes``
    (the first is the set's default resolution); ``vae``: the manifest's VAE entry."""
    from microdit.data.manifest import Manifest, save_manifest
    from microdit.data.schema import (
        TEXT_EMB,
        TEXT_LEN,
        build_table,
        latent_column,
        shard_name,
        tensor_specs,
        write_shard,
    )

    rng = np.random.default_rng(0)
    specs = tensor_specs(list(sizes), {size: (3, size, size) for size in sizes}, (length, dim))
    pixels = {latent_column(size): rng.uniform(-1, 1, (rows, 3, size, size)).astype(np.float16)  # (N, 3, h, w)
              for size in sizes}
    table = build_table({"id": [f"set/{i}" for i in range(rows)], "caption": [f"caption {i}" for i in range(rows)],
                         "source": ["real"] * rows, "dataset": ["set"] * rows, "width": [sizes[0]] * rows,
                         "height": [sizes[0]] * rows, **pixels,
                         TEXT_EMB: rng.standard_normal((rows, length, dim)).astype(np.float16),
                         TEXT_LEN: np.full(rows, length, np.int16)}, specs, {"skipped": {}})
    directory.mkdir(parents=True)
    write_shard(table, str(directory / shard_name(0)))
    save_manifest(str(directory), Manifest(
        name=directory.name, dataset="set", source="real", vae=vae or {"kind": "pixels", "name": "pixels"},
        text_encoder={"name": "test", "max_length": length, "dim": dim}, resolutions=list(sizes), tensors=specs,
        prepare={}, shards=[{"file": shard_name(0), "rows": rows}], rows={"real": rows}, units=1, complete=True))
    return directory


def spy_inception_devices(monkeypatch) -> list[torch.device]:
    """The device of the real extractor behind each Inception call (one batch), in call order."""
    from microdit.evaluate.inception import InceptionFeatureExtractor

    devices: list[torch.device] = []
    real_call = InceptionFeatureExtractor.__call__

    def spy(self, images):
        devices.append(self.device)
        return real_call(self, images)

    monkeypatch.setattr(InceptionFeatureExtractor, "__call__", spy)
    return devices
