"""Fréchet distance between Gaussians fitted to the evaluation classifier's features.

d = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2}): the FID formula, but not
Inception FID: the numbers are only comparable between runs that use the same
classifier and the same feature layer.  Host-side numpy, float64.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np


def gaussian_stats(features: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
  """Mean (D,) and covariance (D, D) of (N, D) features, float64, unbiased (ddof=1).

  Raises:
    ValueError: if `features` is not 2-D or has fewer than 2 rows.
  """
  features = np.asarray(features, dtype=np.float64)
  if features.ndim != 2:
    raise ValueError(f"features must be 2-D (N, D), got shape {features.shape}")
  if features.shape[0] < 2:
    raise ValueError(f"need at least 2 feature vectors for a covariance, got {features.shape[0]}")
  mu = features.mean(axis=0)
  sigma = np.atleast_2d(np.cov(features, rowvar=False, ddof=1))
  return mu, sigma


def _as_stats(mu: np.ndarray, sigma: np.ndarray, name: str) -> Tuple[np.ndarray, np.ndarray]:
  """`mu` as (D,) and `sigma` as (D, D) float64 (scalars allowed for D = 1)."""
  mu = np.atleast_1d(np.asarray(mu, dtype=np.float64))
  sigma = np.atleast_2d(np.asarray(sigma, dtype=np.float64))
  d = mu.shape[0]
  if mu.ndim != 1 or sigma.shape != (d, d):
    raise ValueError(f"{name}: expected mu (D,) and sigma (D, D), got {mu.shape} and {sigma.shape}")
  return mu, sigma


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
  """The symmetric PSD square root (eigenvalues below 0 from rounding clamped)."""
  w, v = np.linalg.eigh((sigma + sigma.T) / 2.0)
  return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
  """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

  d = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2}).  Meant for Gaussians
  fitted to *the evaluation classifier's features* (see `gaussian_stats`):
  the FID formula, but not Inception FID.

  Tr (S1 S2)^{1/2} is computed as Tr (S1^{1/2} S2 S1^{1/2})^{1/2} (the two
  matrices are similar), i.e. from the eigenvalues of a symmetric PSD matrix:
  real and finite also for rank-deficient covariances (fewer samples than
  feature dimensions), where a general matrix square root of S1 S2 is not.

  Args:
    mu1, mu2: (D,) means (scalars allowed for D = 1).
    sigma1, sigma2: (D, D) covariances (scalars allowed for D = 1).

  Returns:
    The distance, >= 0 (rounding below 0 is clamped).
  """
  mu1, sigma1 = _as_stats(mu1, sigma1, "stats 1")
  mu2, sigma2 = _as_stats(mu2, sigma2, "stats 2")
  if mu1.shape != mu2.shape:
    raise ValueError(f"dimension mismatch: {mu1.shape[0]} vs {mu2.shape[0]}")
  r1 = _psd_sqrt(sigma1)
  m = r1 @ sigma2 @ r1
  trace_sqrt = float(np.sum(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2.0), 0.0, None))))
  diff = mu1 - mu2
  distance = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)
  return max(distance, 0.0)


def frechet_distance_from_features(features1: np.ndarray, features2: np.ndarray) -> float:
  """Fréchet distance between Gaussians fitted to two (N, D) sets of classifier features."""
  return frechet_distance(*gaussian_stats(features1), *gaussian_stats(features2))

