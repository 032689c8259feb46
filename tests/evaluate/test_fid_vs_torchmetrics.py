"""Our FID equals torchmetrics' and pytorch-fid's formula on real Inception features.

torchmetrics' ``FrechetInceptionDistance`` is given the very same packaged Inception
(``FIDInception``) as its custom feature extractor; with ``normalize=False`` it passes uint8
images to the module unchanged, and our module does the [-1, 1] scaling and 299 resize. So
both paths see identical features and any difference is the statistics and Fréchet maths.
32 Inception images through torchmetrics, compared with the session's features.
"""

from __future__ import annotations

import numpy as np
import torch
from test_fid_stats import scipy_frechet
from torchmetrics.image.fid import FrechetInceptionDistance

from microdit.evaluate.fid import FeatureStats, fid_from_stats
from microdit.evaluate.inception import FIDInception


def test_fid_equals_torchmetrics_and_scipy_on_identical_features(emoji_set, emoji_features):
    images, _ = emoji_set
    set_a, set_b = images[:16], images[16:32]  # two disjoint sets of 16 real emoji, 64 px
    stats_a = FeatureStats.from_features(emoji_features[:16])
    stats_b = FeatureStats.from_features(emoji_features[16:32])
    ours = fid_from_stats(stats_a, stats_b)

    metric = FrechetInceptionDistance(feature=FIDInception(), normalize=False)
    metric.update(torch.from_numpy(set_a).permute(0, 3, 1, 2), real=True)  # uint8 (N, 3, H, W)
    metric.update(torch.from_numpy(set_b).permute(0, 3, 1, 2), real=False)
    theirs = float(metric.compute())

    scipy_value = scipy_frechet(stats_a.mean, stats_a.cov, stats_b.mean, stats_b.cov)

    assert 10 < ours < 1000  # a real, clearly non-zero distance between different emoji
    assert abs(ours - theirs) / theirs < 1e-3
    assert abs(ours - scipy_value) / scipy_value < 1e-6
    # torchmetrics accumulated the same moments from the same network.
    np.testing.assert_allclose(metric.real_features_sum.numpy() / 16, stats_a.mean, rtol=1e-5, atol=1e-6)
