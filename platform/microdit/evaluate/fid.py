"""Feature statistics and the Fréchet distance between two Gaussians (FID).

``FeatureStats`` keeps the raw first and second moments (count, sum, sum of outer products) in
float64 rather than a mean and covariance: raw moments add, so partial statistics from many
Ray workers or many batches merge exactly, in any order, and a 30K-sample evaluation never
holds 30K feature vectors. Mean and covariance are derived on demand (covariance unbiased,
divided by N - 1, as numpy.cov, pytorch-fid and torchmetrics do).

``frechet_distance`` uses the symmetric form
    Tr sqrt(S1 S2) = Tr sqrt(sqrt(S1) S2 sqrt(S1)),
computed with two symmetric eigendecompositions. Unlike ``scipy.linalg.sqrtm`` of the
non-symmetric product it is real by construction and does not need an eps fallback when the
covariances are singular (always, for fewer than 2049 samples); it matches pytorch-fid's
sqrtm result to ~1e-7 relative (see tests) and is ~6x faster on CPU (1.5 s vs 10 s at D=2048).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from microdit.errors import ConfigError
from microdit.evaluate.inception import FEATURE_DIM

STATS_FORMAT = "microdit-feature-stats-v1"


@dataclass
class FeatureStats:
    """Streaming moments of feature vectors: count, sum (D,), sum of outer products (D, D), float64."""

    count: int
    sum: np.ndarray  # (D,) float64
    outer_sum: np.ndarray  # (D, D) float64

    @classmethod
    def empty(cls, dim: int = FEATURE_DIM) -> FeatureStats:
        return cls(0, np.zeros(dim, np.float64), np.zeros((dim, dim), np.float64))

    @classmethod
    def from_features(cls, features: np.ndarray) -> FeatureStats:
        """One-shot statistics of (N, D) features."""
        stats = cls.empty(np.asarray(features).shape[1])
        stats.update(features)
        return stats

    @property
    def dim(self) -> int:
        return int(self.sum.shape[0])

    def update(self, features: np.ndarray) -> FeatureStats:
        """Add a batch of (N, D) features in place; returns self."""
        f = np.asarray(features, dtype=np.float64)
        if f.ndim != 2 or f.shape[1] != self.dim:
            raise ConfigError(f"features: expected shape (N, {self.dim}), got {f.shape}")
        self.count += f.shape[0]
        self.sum += f.sum(axis=0)  # (D,)
        self.outer_sum += f.T @ f  # (D, D)
        return self

    def merge(self, other: FeatureStats) -> FeatureStats:
        """Statistics of the union of both sample sets (a new object)."""
        if other.dim != self.dim:
            raise ConfigError(f"cannot merge feature stats of width {self.dim} and {other.dim}")
        return FeatureStats(self.count + other.count, self.sum + other.sum, self.outer_sum + other.outer_sum)

    @classmethod
    def merge_all(cls, parts: list[FeatureStats]) -> FeatureStats:
        """Merge partial statistics, e.g. one per Ray worker."""
        if not parts:
            raise ConfigError("merge_all: got no partial statistics to merge")
        total = cls.empty(parts[0].dim)
        for part in parts:
            total = total.merge(part)
        return total

    @property
    def mean(self) -> np.ndarray:
        self._require(1)
        return self.sum / self.count  # (D,)

    @property
    def cov(self) -> np.ndarray:
        """Unbiased covariance (N - 1 denominator), symmetric by construction."""
        self._require(2)
        mu = self.mean
        cov = (self.outer_sum - self.count * np.outer(mu, mu)) / (self.count - 1)  # (D, D)
        return (cov + cov.T) / 2

    def _require(self, n: int) -> None:
        if self.count < n:
            raise ConfigError(f"feature stats: need at least {n} samples, have {self.count}")

    def save(self, path: str | Path) -> str:
        """Write an ``.npz`` (count, sum, outer_sum) to a path or URI; ``load`` reads it back exactly.
        Atomic (``storage.write_bytes``): a crashed or concurrent writer never leaves half a file."""
        from microdit import storage

        buffer = io.BytesIO()
        np.savez(buffer, format=STATS_FORMAT, count=self.count, sum=self.sum, outer_sum=self.outer_sum)
        storage.write_bytes(os.fspath(path), buffer.getvalue())
        return os.fspath(path)

    @classmethod
    def load(cls, path: str | Path) -> FeatureStats:
        """Read our ``.npz``, or a pytorch-fid style one with ``mu``, ``sigma`` and ``count``."""
        from microdit import storage

        path = os.fspath(path)
        if not storage.is_file(path):
            raise ConfigError(f"feature stats: no file at '{path}'")
        with np.load(io.BytesIO(storage.read_bytes(path))) as data:
            keys = set(data.files)
            if {"count", "sum", "outer_sum"} <= keys:
                return cls(
                    int(data["count"]), data["sum"].astype(np.float64), data["outer_sum"].astype(np.float64)
                )
            if {"mu", "sigma", "count"} <= keys:
                n, mu, sigma = (
                    int(data["count"]),
                    data["mu"].astype(np.float64),
                    data["sigma"].astype(np.float64),
                )
                return cls(n, n * mu, (n - 1) * sigma + n * np.outer(mu, mu))
        raise ConfigError(
            f"feature stats '{path}': expected keys (count, sum, outer_sum) or (mu, sigma, count), got {sorted(keys)}"
        )


def _drop_roundoff(eigvals: np.ndarray) -> np.ndarray:
    """Zero the eigenvalues that are round-off, not signal (the numpy.linalg.matrix_rank tolerance).

    With N < D samples most eigenvalues are exactly 0 in theory and ±1e-16 in practice; their
    square roots (~1e-8 each, thousands of them) would otherwise bias Tr sqrt upwards by ~1e-5.
    """
    tol = max(float(eigvals.max()), 0.0) * eigvals.size * np.finfo(np.float64).eps
    return np.where(eigvals > tol, eigvals, 0.0)


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix."""
    eigvals, eigvecs = np.linalg.eigh(matrix)
    return (eigvecs * np.sqrt(_drop_roundoff(eigvals))) @ eigvecs.T


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """d² = |mu1 - mu2|² + Tr(cov1 + cov2 - 2 sqrt(cov1 cov2)), the FID of two Gaussians."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    if mu1.shape != mu2.shape or cov1.shape != cov2.shape or cov1.shape != (mu1.size, mu1.size):
        raise ConfigError(
            f"frechet_distance: shapes disagree: mu {mu1.shape} / {mu2.shape}, cov {cov1.shape} / {cov2.shape}"
        )
    if not (np.isfinite(cov1).all() and np.isfinite(cov2).all()):
        raise ConfigError("frechet_distance: covariance has NaN/inf values (broken features?)")
    sqrt1 = _sqrt_psd(cov1)
    middle = sqrt1 @ cov2 @ sqrt1  # (D, D), symmetric PSD up to round-off
    eigvals = np.linalg.eigvalsh((middle + middle.T) / 2)
    trace_sqrt = float(np.sqrt(_drop_roundoff(eigvals)).sum())
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * trace_sqrt)


def fid_from_stats(generated: FeatureStats, reference: FeatureStats) -> float:
    """FID between two sets of feature statistics."""
    return frechet_distance(generated.mean, generated.cov, reference.mean, reference.cov)


def fid_metric_name(num_samples: int) -> str:
    """Metric name carrying the generated sample count, so different counts are never compared.

    Rule: a count that is a whole number of thousands is written in k (1000 -> ``fid_1k``,
    10000 -> ``fid_10k``, 30000 -> ``fid_30k``); any other count is written out in full
    (256 -> ``fid_256``, 1500 -> ``fid_1500``). FID is biased upwards at small counts, so
    ``fid_1k`` and ``fid_30k`` are different metrics, not two estimates of one.
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples < 2:
        raise ConfigError(f"num_samples: FID needs an integer count >= 2, got {num_samples!r}")
    n = int(num_samples)
    return f"fid_{n // 1000}k" if n % 1000 == 0 else f"fid_{n}"
