"""FID and KID between two sets of image features (e.g. Inception pool3).

Statistics are accumulated and compared in float64: in float32 the matrix
square root of 2048 x 2048 covariances loses digits that FID differences of a
few tenths depend on.

    stats = FeatureStats.from_features(features)            # [N, D]
    fid = frechet_distance(real_stats, fake_stats)
    kid_mean, kid_std = kernel_inception_distance(real_feats, fake_feats)
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class FeatureStats:
  """Mean [D] and covariance [D, D] (unbiased) of N feature vectors, float64."""

  mean: np.ndarray
  cov: np.ndarray
  count: int

  @classmethod
  def from_features(cls, features: np.ndarray) -> FeatureStats:
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
      raise ValueError(f"features must be [N >= 2, D], got {f.shape}")
    return cls(f.mean(axis=0), np.cov(f, rowvar=False), f.shape[0])


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
  """Symmetric square root of a positive semi-definite matrix (eigenvalues < 0 -> 0)."""
  values, vectors = np.linalg.eigh((matrix + matrix.T) / 2.0)
  return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(a: FeatureStats, b: FeatureStats) -> float:
  """Frechet distance between Gaussians fitted to two feature sets:

      d^2 = |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))

  Tr (S_a S_b)^(1/2) is computed as the trace of the square root of the
  symmetric PSD matrix S_a^(1/2) S_b S_a^(1/2), which has the same
  eigenvalues, so no complex parts or ill-conditioned inverses appear.
  """
  if a.mean.shape != b.mean.shape:
    raise ValueError(f"feature sizes differ: {a.mean.shape} vs {b.mean.shape}")
  root_a = _sqrt_psd(a.cov)
  inner = np.linalg.eigvalsh(root_a @ b.cov @ root_a)
  trace_sqrt = np.sum(np.sqrt(np.clip(inner, 0.0, None)))
  diff = a.mean - b.mean
  return float(
      diff @ diff + np.trace(a.cov) + np.trace(b.cov) - 2.0 * trace_sqrt
  )


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
  """Unbiased MMD^2 with the cubic polynomial kernel k(u, v) = (u.v / D + 1)^3."""
  d = x.shape[1]
  kxx = (x @ x.T / d + 1.0) ** 3
  kyy = (y @ y.T / d + 1.0) ** 3
  kxy = (x @ y.T / d + 1.0) ** 3
  m, n = len(x), len(y)
  return float(
      (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
      + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
      - 2.0 * kxy.mean()
  )


def kernel_inception_distance(
    a: np.ndarray,
    b: np.ndarray,
    num_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
  """KID (Binkowski et al. 2018): mean and std of the unbiased MMD^2 over random
  subsets (drawn without replacement within a subset) of both feature sets [N, D].

  Unbiased: for two samples of one distribution its expectation is 0, so small
  negative values are possible and meaningful.
  """
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
    raise ValueError(
        f"features must be [N, D] with the same D, got {a.shape} and {b.shape}"
    )
  size = min(subset_size, len(a), len(b))
  if size < 2:
    raise ValueError(
        f"KID needs at least 2 features per set, got {len(a)} and {len(b)}"
    )
  rng = np.random.default_rng(seed)
  values = [
      _mmd2_unbiased(
          a[rng.choice(len(a), size, replace=False)],
          b[rng.choice(len(b), size, replace=False)],
      )
      for _ in range(num_subsets)
  ]
  return float(np.mean(values)), float(np.std(values))
