"""FID behaves like FID on real images: zero on itself, small between halves, large vs noise,
growing with blur. 48 + 24 + 3 × 40 = 192 Inception images in this file.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFilter

from microdit.evaluate.fid import FeatureStats, fid_from_stats


def blur(images: np.ndarray, radius: float) -> np.ndarray:
    """Gaussian blur of each uint8 (H, W, 3) image, Pillow's ``GaussianBlur(radius)``."""
    return np.stack([np.asarray(Image.fromarray(im).filter(ImageFilter.GaussianBlur(radius))) for im in images])


@pytest.fixture(scope="module")
def emoji_features(emoji_set, inception_extractor) -> np.ndarray:
    return inception_extractor(emoji_set[0])  # (48, 2048)


def test_fid_of_a_set_with_itself_is_zero(emoji_features):
    stats = FeatureStats.from_features(emoji_features)
    assert abs(fid_from_stats(stats, stats)) < 1e-6


def test_halves_are_far_closer_than_noise(emoji_set, emoji_features, inception_extractor):
    half_a = FeatureStats.from_features(emoji_features[0::2])  # 24 images
    half_b = FeatureStats.from_features(emoji_features[1::2])  # the other 24
    noise = np.random.default_rng(0).integers(0, 256, size=(24, 64, 64, 3), dtype=np.uint8)
    noise_stats = FeatureStats.from_features(inception_extractor(noise))

    between_halves = fid_from_stats(half_a, half_b)
    versus_noise = fid_from_stats(half_a, noise_stats)
    assert between_halves > 0
    assert versus_noise > 3 * between_halves


def test_fid_grows_monotonically_with_blur(emoji_set, emoji_features, inception_extractor):
    images = emoji_set[0][:40]
    clean = FeatureStats.from_features(emoji_features[:40])
    fids = [
        fid_from_stats(FeatureStats.from_features(inception_extractor(blur(images, radius))), clean)
        for radius in (0.5, 1.5, 4.0)
    ]
    assert 0 < fids[0] < fids[1] < fids[2]
    assert fids[2] > 2 * fids[0]
