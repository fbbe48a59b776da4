"""`evaluation.frechet`: Fréchet distance between Gaussians fitted to features."""
from __future__ import annotations

import numpy as np
import pytest

from unlearn_jax import evaluation


def test_gaussian_stats():
  x = np.array([[1.0, 2.0], [3.0, 2.0], [5.0, 8.0]])
  mu, sigma = evaluation.gaussian_stats(x)
  assert mu.dtype == np.float64 and sigma.shape == (2, 2)
  np.testing.assert_allclose(mu, [3.0, 4.0])
  np.testing.assert_allclose(sigma, np.cov(x.T, ddof=1))
  _, sigma_1d = evaluation.gaussian_stats(x[:, :1])
  assert sigma_1d.shape == (1, 1)
  with pytest.raises(ValueError):
    evaluation.gaussian_stats(x[:1])


def test_frechet_distance_diagonal_closed_form():
  mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([0.5, 1.0, 1.0])
  a, b = np.array([1.0, 4.0, 0.25]), np.array([2.0, 1.0, 9.0])
  expected = np.sum((mu1 - mu2) ** 2) + np.sum(a + b - 2.0 * np.sqrt(a * b))
  got = evaluation.frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
  assert got == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_one_dimensional():
  m1, s1, m2, s2 = 1.5, 2.0, -0.5, 0.5
  expected = (m1 - m2) ** 2 + (s1 - s2) ** 2
  assert evaluation.frechet_distance(m1, s1 ** 2, m2, s2 ** 2) == pytest.approx(expected, rel=1e-9)
  assert evaluation.frechet_distance(
      np.array([m1]), np.array([[s1 ** 2]]), np.array([m2]), np.array([[s2 ** 2]])
  ) == pytest.approx(expected, rel=1e-9)


def _random_stats(rng: np.random.Generator, n: int, d: int):
  x = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + rng.normal(size=d)
  return evaluation.gaussian_stats(x)


def test_frechet_distance_identity_symmetry_positivity():
  rng = np.random.default_rng(0)
  mu1, s1 = _random_stats(rng, 200, 6)
  mu2, s2 = _random_stats(rng, 200, 6)
  assert abs(evaluation.frechet_distance(mu1, s1, mu1, s1)) < 1e-6
  d12 = evaluation.frechet_distance(mu1, s1, mu2, s2)
  d21 = evaluation.frechet_distance(mu2, s2, mu1, s1)
  assert d12 > 0.0
  assert d12 == pytest.approx(d21, rel=1e-7)


def test_frechet_distance_singular_covariance_is_finite():
  rng = np.random.default_rng(1)
  x1 = rng.normal(size=(100, 4))
  x2 = rng.normal(size=(100, 4)) + 0.5
  x1[:, 2] = 1.0  # constant columns: rank-deficient covariances
  x2[:, 2] = 3.0
  x2[:, 0] = 0.0
  d = evaluation.frechet_distance_from_features(x1, x2)
  assert np.isfinite(d) and d > 0.0
  # Fully degenerate: both covariances zero, distance is the mean gap.
  z1, z2 = np.zeros((10, 3)), np.ones((10, 3))
  assert evaluation.frechet_distance_from_features(z1, z2) == pytest.approx(3.0, abs=1e-5)


def test_frechet_distance_matches_general_sqrtm_when_well_conditioned():
  import scipy.linalg
  rng = np.random.default_rng(3)
  a, b = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
  s1, s2 = a @ a.T + np.eye(5), b @ b.T + 0.5 * np.eye(5)
  m1, m2 = rng.normal(size=5), rng.normal(size=5)
  ref = np.sum((m1 - m2) ** 2) + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
  np.testing.assert_allclose(evaluation.frechet_distance(m1, s1, m2, s2), ref, rtol=1e-8)


def test_frechet_distance_fewer_samples_than_dimensions():
  rng = np.random.default_rng(4)
  d = evaluation.frechet_distance_from_features(rng.normal(size=(6, 64)), rng.normal(size=(6, 64)) + 1.0)
  assert np.isfinite(d) and d > 0


def test_frechet_distance_shape_mismatch():
  with pytest.raises(ValueError):
    evaluation.frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


def test_frechet_distance_from_features_mean_shift():
  rng = np.random.default_rng(42)
  m = np.array([1.0, -0.5, 0.25, 0.75])
  f1 = rng.standard_normal((20000, 4))
  f2 = rng.standard_normal((20000, 4)) + m
  d = evaluation.frechet_distance_from_features(f1, f2)
  assert d == pytest.approx(float(m @ m), abs=0.15)
