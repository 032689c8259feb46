"""FID behaves like FID on real images: zero on itself, and the two halves of one set of
real emoji are far closer to each other than to uniform noise. Uses the session's 96 emoji
features plus 48 noise images.
"""

from __future__ import annotations

import numpy as np

from microdit.evaluate.fid import FeatureStats, fid_from_stats


def test_fid_of_a_set_with_itself_is_zero(emoji_features):
    stats = FeatureStats.from_features(emoji_features)
    assert abs(fid_from_stats(stats, stats)) < 1e-6


def test_halves_are_far_closer_than_noise(emoji_features, inception_extractor):
    half_a = FeatureStats.from_features(emoji_features[0::2])  # 48 images
    half_b = FeatureStats.from_features(emoji_features[1::2])  # the other 48
    noise = np.random.default_rng(0).integers(0, 256, size=(48, 64, 64, 3), dtype=np.uint8)
    noise_stats = FeatureStats.from_features(inception_extractor(noise))

    between_halves = fid_from_stats(half_a, half_b)  # ≈ 142: 48 samples of very diverse emoji
    versus_noise = fid_from_stats(half_a, noise_stats)  # ≈ 421
    assert 0 < between_halves < 250
    assert versus_noise > 2.5 * between_halves
