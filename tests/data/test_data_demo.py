"""The built-in demo sets: contents, disjoint held-out split, determinism, idempotence."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from microdit.data.demo import ensure_demo_sets
from microdit.data.emoji import caption_of, emoji_table
from microdit.data.manifest import load_manifest
from microdit.data.reader import read_set
from microdit.data.synthetic import compose


def test_tiny_demo_sets_have_the_documented_shape(tiny_demo):
    assert set(tiny_demo) == {"demo_real", "demo_real_heldout", "demo_synthetic"}
    real, heldout, synthetic = (
        load_manifest(tiny_demo[k]) for k in ("demo_real", "demo_real_heldout", "demo_synthetic")
    )
    assert (real.source, heldout.source, synthetic.source) == ("real", "real", "synthetic")
    assert (
        real.rows_total + sum(real.skipped.values()) == 48
        and heldout.rows_total + sum(heldout.skipped.values()) == 16
    )
    assert synthetic.rows == {"synthetic": 48} and synthetic.skipped == {}
    for m in (real, heldout, synthetic):
        assert m.complete and m.vae["name"] == "pixels" and m.latent_shape(32) == (3, 32, 32)
        assert m.text_shape == (32, 384) and m.text_encoder["name"] == "minilm"
    data = read_set(tiny_demo["demo_real"])
    names = {caption for _, caption in emoji_table()}
    assert set(data["caption"]) <= names
    assert data["latents"].min() >= -1 and data["latents"].max() <= 1
    assert data["latents"].astype(np.float32).std() > 0.2  # real drawings, not blank canvases
    assert not set(data["id"]) & set(read_set(tiny_demo["demo_real_heldout"], columns=["id"])["id"])


def test_synthetic_captions_are_exact_and_deterministic(tiny_demo):
    data = read_set(tiny_demo["demo_synthetic"], columns=["id", "caption", "latents"])
    i = data["id"].index("demo_synthetic/s0-5")
    image, caption = compose(0, 5, 64)
    assert data["caption"][i] == caption
    expected = np.asarray(image.resize((32, 32), resample=3), dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1
    assert np.abs(data["latents"][i].astype(np.float32) - expected).max() < 2e-3
    assert compose(0, 5, 64)[1] == caption and compose(1, 5, 64) != compose(0, 5, 64)
    captions = [compose(0, k, 64)[1] for k in range(40)]
    assert any(" above " in c or " below " in c or " left of " in c or " right of " in c for c in captions)
    assert caption_of("🇫🇷", ":France:") == "flag of France"


def test_second_call_is_a_fast_noop(tiny_demo):
    root = Path(os.path.dirname(tiny_demo["demo_real"]))
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*.parquet")}
    started = time.perf_counter()
    again = ensure_demo_sets(str(root), resolution=32, size="tiny")
    assert time.perf_counter() - started < 2.0
    assert again == tiny_demo and all(isinstance(location, str) for location in again.values())
    assert stamps == {p: p.stat().st_mtime_ns for p in root.rglob("*.parquet")}
