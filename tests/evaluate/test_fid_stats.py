"""FeatureStats accumulation/merge/IO and the Fréchet distance maths, on synthetic features.

No Inception here: these check the numbers against numpy's covariance and an independent
scipy ``sqrtm`` implementation (pytorch-fid's formula) directly.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from microdit.errors import ConfigError
from microdit.evaluate.fid import FeatureStats, fid_from_stats, fid_metric_name, frechet_distance


def scipy_frechet(mu1, sigma1, mu2, sigma2, eps=1e-6) -> float:
    """pytorch-fid's calculate_frechet_distance, written out independently with scipy sqrtm."""
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        assert np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3)
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def features(n: int, dim: int, seed: int, shape: float = 1.0) -> np.ndarray:
    """Non-negative, skewed features like Inception pool3 activations (post-ReLU average pool)."""
    return np.random.default_rng(seed).gamma(shape, 0.3, size=(n, dim))


def test_stats_match_numpy_mean_and_cov():
    f = features(50, 16, seed=0)
    stats = FeatureStats.from_features(f)
    assert stats.count == 50
    np.testing.assert_allclose(stats.mean, f.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(stats.cov, np.cov(f, rowvar=False), rtol=1e-10, atol=1e-14)


def test_float32_features_are_summed_in_float64():
    """Inception gives float32 features; summed in float32, products of values near 1000 lose digits."""
    f32 = (1000.0 + features(64, 8, seed=3)).astype(np.float32)
    stats = FeatureStats.from_features(f32)
    exact = f32.astype(np.float64)
    assert stats.sum.dtype == stats.outer_sum.dtype == np.float64
    assert np.array_equal(stats.sum, exact.sum(axis=0)) and np.array_equal(stats.outer_sum, exact.T @ exact)


@pytest.mark.parametrize(("bad", "shape"), [((3, 5), "(3, 5)"), ((4,), "(4,)"), ((2, 4, 1), "(2, 4, 1)")])
def test_update_refuses_features_of_another_shape_and_adds_nothing(bad, shape):
    stats = FeatureStats.empty(4)
    with pytest.raises(ConfigError) as info:
        stats.update(np.ones(bad))
    assert str(info.value) == f"features: expected shape (N, 4), got {shape}"
    assert stats.count == 0 and not stats.sum.any() and not stats.outer_sum.any()


def test_mean_needs_one_sample_and_covariance_two():
    one = FeatureStats.from_features(np.array([[1.0, 3.0]]))
    assert one.mean.tolist() == [1.0, 3.0]
    with pytest.raises(ConfigError) as info:
        _ = one.cov
    assert str(info.value) == "feature stats: need at least 2 samples, have 1"
    two = FeatureStats.from_features(np.array([[0.0, 2.0], [2.0, 0.0]]))
    assert two.cov.tolist() == [[2.0, -2.0], [-2.0, 2.0]]  # exactly two samples: unbiased, N - 1 = 1
    with pytest.raises(ConfigError) as info:
        _ = FeatureStats.empty(2).mean
    assert str(info.value) == "feature stats: need at least 1 samples, have 0"


def test_merge_of_parts_equals_one_shot():
    f = features(100, 2048, seed=1)
    one_shot = FeatureStats.from_features(f)
    parts = [FeatureStats.from_features(f[i : i + 23]) for i in range(0, 100, 23)]  # uneven parts
    merged = FeatureStats.merge_all(parts)
    assert merged.count == 100
    np.testing.assert_allclose(merged.sum, one_shot.sum, rtol=1e-13)
    np.testing.assert_allclose(merged.outer_sum, one_shot.outer_sum, rtol=1e-12)
    np.testing.assert_allclose(merged.cov, one_shot.cov, rtol=1e-9, atol=1e-13)
    streamed = FeatureStats.empty()
    for i in range(0, 100, 7):
        streamed.update(f[i : i + 7])
    np.testing.assert_allclose(streamed.mean, one_shot.mean, rtol=1e-13)

    narrow = [FeatureStats.from_features(features(5, 64, seed=s)) for s in (1, 2)]
    assert FeatureStats.merge_all(narrow).dim == 64 and FeatureStats.merge_all(narrow).count == 10  # width of the parts
    assert FeatureStats.merge_all(narrow[:1]).count == 5  # one part is a valid merge
    with pytest.raises(ConfigError) as info:
        FeatureStats.merge_all([])
    assert str(info.value) == "merge_all: got no partial statistics to merge"
    with pytest.raises(ConfigError) as info:
        one_shot.merge(narrow[0])
    assert str(info.value) == "cannot merge feature stats of width 2048 and 64"


def test_save_load_round_trip_and_pytorch_fid_format(tmp_path):
    stats = FeatureStats.from_features(features(30, 64, seed=2))
    loaded = FeatureStats.load(stats.save(tmp_path / "s.npz"))
    assert loaded.count == 30
    np.testing.assert_array_equal(loaded.sum, stats.sum)
    np.testing.assert_array_equal(loaded.outer_sum, stats.outer_sum)

    np.savez(tmp_path / "pf.npz", mu=stats.mean, sigma=stats.cov, count=30)
    from_moments = FeatureStats.load(tmp_path / "pf.npz")
    np.testing.assert_allclose(from_moments.cov, stats.cov, rtol=1e-9, atol=1e-14)

    np.savez(tmp_path / "bad.npz", mu=stats.mean, sigma=stats.cov)  # no count: cannot merge
    with pytest.raises(ConfigError) as info:
        FeatureStats.load(tmp_path / "bad.npz")
    assert str(info.value) == (f"feature stats '{tmp_path / 'bad.npz'}': expected keys (count, sum, outer_sum) or "
                               "(mu, sigma, count), got ['mu', 'sigma']")
    with pytest.raises(ConfigError) as info:
        FeatureStats.load(tmp_path / "missing.npz")
    assert str(info.value) == f"feature stats: no file at '{tmp_path / 'missing.npz'}'"

    with np.load(tmp_path / "s.npz") as data:  # the file says what it is, in float64
        assert sorted(data.files) == ["count", "format", "outer_sum", "sum"]
        assert str(data["format"]) == "microdit-feature-stats-v1"
    np.savez(tmp_path / "f32.npz", count=30, sum=stats.sum.astype(np.float32), outer_sum=stats.outer_sum.astype(np.float32))
    as_float32 = FeatureStats.load(tmp_path / "f32.npz")
    assert as_float32.sum.dtype == as_float32.outer_sum.dtype == np.float64  # moments always merge in float64
    np.savez(tmp_path / "pf32.npz", mu=stats.mean.astype(np.float32), sigma=stats.cov.astype(np.float32), count=30)
    from_float32 = FeatureStats.load(tmp_path / "pf32.npz")
    assert from_float32.sum.dtype == from_float32.outer_sum.dtype == np.float64
    np.testing.assert_allclose(from_float32.mean, stats.mean.astype(np.float32), rtol=0, atol=0)


def test_frechet_matches_scipy_sqrtm_on_singular_covariances():
    # 64 samples in 512 dims: rank-deficient covariances, the case small FID runs always hit
    # (the full 2048-d comparison on real Inception features is in test_fid_vs_torchmetrics).
    a = FeatureStats.from_features(features(64, 512, seed=3))
    b = FeatureStats.from_features(features(64, 512, seed=4, shape=1.3))
    ours = fid_from_stats(a, b)
    reference = scipy_frechet(a.mean, a.cov, b.mean, b.cov)
    assert ours > 20
    assert abs(ours - reference) / reference < 1e-6


def test_frechet_of_full_rank_gaussians_matches_closed_form():
    # Diagonal covariances: Tr sqrt(S1 S2) = sum sqrt(s1_i s2_i), so the FID is known exactly.
    s1, s2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    expected = 1 + 0 + 4 + (s1 + s2).sum() - 2 * np.sqrt(s1 * s2).sum()  # = 5 + 20 - 2*(2+2+3) = 11
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(11.0, abs=1e-12)
    assert expected == pytest.approx(11.0)


def test_frechet_scales_with_the_square_of_the_features():
    """FID is in squared feature units. Scaling every feature by 2^-24 (exactly) scales it by 2^-48: the
    round-off cut is relative to the largest eigenvalue, so small-valued features lose no real eigenvalue."""
    a, b = features(24, 64, seed=7), features(24, 64, seed=8, shape=1.3)  # singular covariances
    base = fid_from_stats(FeatureStats.from_features(a), FeatureStats.from_features(b))
    assert base > 1.0
    for scale in (2.0**-24, 2.0**10):
        scaled = fid_from_stats(FeatureStats.from_features(a * scale), FeatureStats.from_features(b * scale))
        assert scaled == pytest.approx(base * scale**2, rel=1e-9, abs=0)


def test_frechet_works_in_float64_whatever_the_input_dtype():
    a = FeatureStats.from_features(features(40, 64, seed=9))
    b = FeatureStats.from_features(features(40, 64, seed=10, shape=1.3))
    single = [x.astype(np.float32) for x in (a.mean, a.cov, b.mean, b.cov)]
    widened = [x.astype(np.float64) for x in single]  # the same values, exactly
    assert frechet_distance(*single) == frechet_distance(*widened)


def test_frechet_of_a_set_with_itself_is_zero():
    a = FeatureStats.from_features(features(40, 512, seed=5))
    assert abs(fid_from_stats(a, a)) < 1e-8


@pytest.mark.parametrize(("mu2", "cov1", "cov2", "shapes"), [
    (np.zeros(4), np.eye(3), np.eye(4), "mu (3,) / (4,), cov (3, 3) / (4, 4)"),  # both disagree
    (np.zeros(4), np.eye(3), np.eye(3), "mu (3,) / (4,), cov (3, 3) / (3, 3)"),  # only the means
    (np.zeros(3), np.eye(3), np.eye(4), "mu (3,) / (3,), cov (3, 3) / (4, 4)"),  # only the covariances
    (np.zeros(3), np.eye(4), np.eye(4), "mu (3,) / (3,), cov (4, 4) / (4, 4)"),  # covariances not D x D
])
def test_frechet_rejects_each_shape_disagreement_on_its_own(mu2, cov1, cov2, shapes):
    with pytest.raises(ConfigError) as info:
        frechet_distance(np.zeros(3), cov1, mu2, cov2)
    assert str(info.value) == f"frechet_distance: shapes disagree: {shapes}"


@pytest.mark.parametrize("broken", [0, 1])
def test_frechet_rejects_a_non_finite_value_in_either_covariance(broken):
    covs = [np.eye(3), np.eye(3)]
    covs[broken] = np.where(np.eye(3) > 0, np.nan, 0.0)
    with pytest.raises(ConfigError) as info:
        frechet_distance(np.zeros(3), covs[0], np.zeros(3), covs[1])
    assert str(info.value) == "frechet_distance: covariance has NaN/inf values (broken features?)"


@pytest.mark.parametrize(
    "n, name",
    [(1000, "fid_1k"), (10_000, "fid_10k"), (30_000, "fid_30k"), (256, "fid_256"), (1500, "fid_1500"),
     (2, "fid_2"), (np.int64(8), "fid_8")],
)
def test_fid_metric_name(n, name):
    assert fid_metric_name(n) == name


@pytest.mark.parametrize("bad", [0, 1, -5, 2.5, True])
def test_fid_metric_name_rejects_bad_counts(bad):
    with pytest.raises(ConfigError) as info:
        fid_metric_name(bad)
    assert str(info.value) == f"num_samples: FID needs an integer count >= 2, got {bad!r}"
