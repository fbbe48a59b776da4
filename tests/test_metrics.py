"""Tests for `unlearn_jax.metrics`: attack rates, Fréchet distance, curve CSV and plots."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest

from unlearn_jax import metrics
from unlearn_jax.errors import UserError


# ----------------------------------------------------------------------------
# Attack rate.
# ----------------------------------------------------------------------------
def test_attack_rate_single_target():
  assert metrics.attack_rate(np.array([3, 3, 1, 0]), (3,)) == 0.5
  assert metrics.attack_rate(np.array([3, 3, 1, 0]), 3) == 0.5
  assert metrics.attack_rate(np.array([1, 2, 0]), [5]) == 0.0


def test_attack_rate_multiple_targets():
  predicted = np.array([3, 3, 1, 0, 2, 7, 1, 1])
  assert metrics.attack_rate(predicted, [1, 7]) == pytest.approx(4 / 8)
  assert metrics.attack_rate(predicted, np.array([0, 1, 2, 3, 7])) == 1.0


def test_attack_rate_empty_is_nan():
  assert math.isnan(metrics.attack_rate(np.zeros((0,), np.int32), (3,)))
  assert math.isnan(metrics.top_k_attack_rate(np.zeros((0, 4)), (3,), k=2))


def test_attack_rate_with_top_k_predictions():
  predicted = np.array([0, 1, 2])
  top_k = np.array([[0, 3], [1, 2], [2, 3]])
  assert metrics.attack_rate(predicted, 3, top_k_predictions=top_k) == pytest.approx(2 / 3)
  with pytest.raises(ValueError):
    metrics.attack_rate(predicted, 3, top_k_predictions=top_k[:2])


def test_attack_rate_bad_targets():
  with pytest.raises(UserError):
    metrics.attack_rate(np.array([1, 2]), [])


# Rows: argmax, then 2nd and 3rd best classes.
_LOGITS = np.array([
    [5.0, 1.0, 0.0, 2.0, -1.0],  # order 0, 3, 1, 2, 4
    [0.0, 4.0, 3.0, -2.0, 1.0],  # order 1, 2, 4, 0, 3
    [1.0, 0.5, 9.0, 0.0, 8.0],   # order 2, 4, 0, 1, 3
    [0.0, 0.0, 0.0, 7.0, 0.0],   # order 3, 0, 1, 2, 4 (ties: lower index first)
])


def test_top_k_attack_rate_k1_matches_argmax():
  for target in range(5):
    expected = metrics.attack_rate(np.argmax(_LOGITS, axis=1), (target,))
    assert metrics.top_k_attack_rate(_LOGITS, (target,), k=1) == expected
  assert metrics.top_k_attack_rate(_LOGITS, (3,), k=1) == 0.25


def test_top_k_attack_rate_k3():
  # Top-3 sets: {0,3,1}, {1,2,4}, {2,4,0}, {3,0,1}.
  assert metrics.top_k_attack_rate(_LOGITS, (3,), k=3) == 0.5
  assert metrics.top_k_attack_rate(_LOGITS, (4,), k=3) == 0.5
  assert metrics.top_k_attack_rate(_LOGITS, (0,), k=3) == 0.75
  assert metrics.top_k_attack_rate(_LOGITS, (2, 3), k=3) == 1.0


def test_top_k_bad_k():
  with pytest.raises(UserError):
    metrics.top_k_attack_rate(_LOGITS, (0,), k=0)
  with pytest.raises(UserError):
    metrics.top_k_attack_rate(_LOGITS, (0,), k=6)


# ----------------------------------------------------------------------------
# Fréchet distance.
# ----------------------------------------------------------------------------
def test_gaussian_stats():
  x = np.array([[1.0, 2.0], [3.0, 2.0], [5.0, 8.0]])
  mu, sigma = metrics.gaussian_stats(x)
  assert mu.dtype == np.float64 and sigma.shape == (2, 2)
  np.testing.assert_allclose(mu, [3.0, 4.0])
  np.testing.assert_allclose(sigma, np.cov(x.T, ddof=1))
  _, sigma_1d = metrics.gaussian_stats(x[:, :1])
  assert sigma_1d.shape == (1, 1)
  with pytest.raises(ValueError):
    metrics.gaussian_stats(x[:1])


def test_frechet_distance_diagonal_closed_form():
  mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([0.5, 1.0, 1.0])
  a, b = np.array([1.0, 4.0, 0.25]), np.array([2.0, 1.0, 9.0])
  expected = np.sum((mu1 - mu2) ** 2) + np.sum(a + b - 2.0 * np.sqrt(a * b))
  got = metrics.frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
  assert got == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_one_dimensional():
  m1, s1, m2, s2 = 1.5, 2.0, -0.5, 0.5
  expected = (m1 - m2) ** 2 + (s1 - s2) ** 2
  assert metrics.frechet_distance(m1, s1 ** 2, m2, s2 ** 2) == pytest.approx(expected, rel=1e-9)
  assert metrics.frechet_distance(
      np.array([m1]), np.array([[s1 ** 2]]), np.array([m2]), np.array([[s2 ** 2]])
  ) == pytest.approx(expected, rel=1e-9)


def _random_stats(rng: np.random.Generator, n: int, d: int):
  x = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + rng.normal(size=d)
  return metrics.gaussian_stats(x)


def test_frechet_distance_identity_symmetry_positivity():
  rng = np.random.default_rng(0)
  mu1, s1 = _random_stats(rng, 200, 6)
  mu2, s2 = _random_stats(rng, 200, 6)
  assert abs(metrics.frechet_distance(mu1, s1, mu1, s1)) < 1e-6
  d12 = metrics.frechet_distance(mu1, s1, mu2, s2)
  d21 = metrics.frechet_distance(mu2, s2, mu1, s1)
  assert d12 > 0.0
  assert d12 == pytest.approx(d21, rel=1e-7)


def test_frechet_distance_singular_covariance_is_finite():
  rng = np.random.default_rng(1)
  x1 = rng.normal(size=(100, 4))
  x2 = rng.normal(size=(100, 4)) + 0.5
  x1[:, 2] = 1.0  # constant columns: rank-deficient covariances
  x2[:, 2] = 3.0
  x2[:, 0] = 0.0
  d = metrics.frechet_distance_from_features(x1, x2)
  assert np.isfinite(d) and d > 0.0
  # Fully degenerate: both covariances zero, distance is the mean gap.
  z1, z2 = np.zeros((10, 3)), np.ones((10, 3))
  assert metrics.frechet_distance_from_features(z1, z2) == pytest.approx(3.0, abs=1e-5)


def test_frechet_distance_matches_general_sqrtm_when_well_conditioned():
  import scipy.linalg
  rng = np.random.default_rng(3)
  a, b = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
  s1, s2 = a @ a.T + np.eye(5), b @ b.T + 0.5 * np.eye(5)
  m1, m2 = rng.normal(size=5), rng.normal(size=5)
  ref = np.sum((m1 - m2) ** 2) + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
  np.testing.assert_allclose(metrics.frechet_distance(m1, s1, m2, s2), ref, rtol=1e-8)


def test_frechet_distance_fewer_samples_than_dimensions():
  rng = np.random.default_rng(4)
  d = metrics.frechet_distance_from_features(rng.normal(size=(6, 64)), rng.normal(size=(6, 64)) + 1.0)
  assert np.isfinite(d) and d > 0


def test_frechet_distance_shape_mismatch():
  with pytest.raises(ValueError):
    metrics.frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


def test_frechet_distance_from_features_mean_shift():
  rng = np.random.default_rng(42)
  m = np.array([1.0, -0.5, 0.25, 0.75])
  f1 = rng.standard_normal((20000, 4))
  f2 = rng.standard_normal((20000, 4)) + m
  d = metrics.frechet_distance_from_features(f1, f2)
  assert d == pytest.approx(float(m @ m), abs=0.15)


# ----------------------------------------------------------------------------
# Curves.
# ----------------------------------------------------------------------------
def test_curve_csv_round_trip(tmp_path):
  path = str(tmp_path / "curves" / "ar_dimra.csv")
  steps = np.array([0, 10, 20, 30])
  columns = {"sgu": [0.1, 0.2, 0.35, 1 / 3], "esd": [0.0, float("nan"), 0.5, 0.9]}
  metrics.write_curve_csv(path, steps, columns)
  assert sorted(os.listdir(os.path.dirname(path))) == ["ar_dimra.csv"]
  with open(path) as f:
    assert f.readline().strip() == "step,sgu,esd"
  got_steps, got = metrics.read_curve_csv(path)
  np.testing.assert_array_equal(got_steps, steps)
  assert list(got) == ["sgu", "esd"]
  for name, values in columns.items():
    np.testing.assert_array_equal(got[name], np.asarray(values))


def test_curve_csv_rejects_bad_input(tmp_path):
  path = str(tmp_path / "c.csv")
  with pytest.raises(ValueError):
    metrics.write_curve_csv(path, [0, 1], {"a": [1.0]})
  with pytest.raises(ValueError):
    metrics.write_curve_csv(path, [0, 1], {"a,b": [1.0, 2.0]})
  assert not os.path.exists(path) and not os.path.exists(path + ".tmp")


def test_plot_curves_writes_png(tmp_path):
  path = str(tmp_path / "ar_dimra.png")
  curves = {"sgu": ([0, 10, 20], [0.0, 0.3, 0.8]), "esd": ([0, 10, 20], [0.0, 0.6, 0.95])}
  metrics.plot_curves(path, curves, title="AR_DiMRA", xlabel="attack step", ylabel="AR",
                      ylim=(0.0, 1.0))
  with open(path, "rb") as f:
    data = f.read()
  assert len(data) > 100
  assert data[:8] == b"\x89PNG\r\n\x1a\n"
  assert os.listdir(tmp_path) == ["ar_dimra.png"]


def test_histogram_tv_hand_values():
  from unlearn_jax import evaluation
  assert evaluation.histogram_tv([5, 5], [1, 1]) == pytest.approx(0.0)
  assert evaluation.histogram_tv([10, 0], [0, 3]) == pytest.approx(1.0)
  assert evaluation.histogram_tv([3, 1, 0], [1, 1, 2]) == pytest.approx(0.5 * (0.5 + 0.0 + 0.5))
  # over classes (0, 2) only, each renormalised: (3/3, 0) vs (1/3, 2/3)
  assert evaluation.histogram_tv([3, 1, 0], [1, 1, 2], classes=(0, 2)) == pytest.approx(2 / 3)
  assert evaluation.histogram_tv([0, 0], [1, 1]) == 1.0


def test_sample_quality_confident_share_and_recognised():
  from unlearn_jax import evaluation
  pred = np.array([0, 0, 1, 2, 2, 2])
  conf = np.array([0.95, 0.5, 0.9, 0.99, 0.2, 0.91])
  data = np.array([0, 1, 2, 0, 1, 2])
  q = evaluation.sample_quality(pred, conf, data, 3, (0, 1), threshold=0.9, min_confident_share=0.6)
  assert q["confident_share"] == pytest.approx(4 / 6)
  assert q["recognised"] is True
  assert q["histogram_tv"] == pytest.approx(0.5 * (abs(2 / 6 - 1 / 3) + abs(1 / 6 - 1 / 3) + abs(3 / 6 - 1 / 3)))
  assert q["retain_histogram_tv"] == pytest.approx(0.5 * (abs(2 / 3 - 0.5) + abs(1 / 3 - 0.5)))
  q = evaluation.sample_quality(pred, conf, data, 3, (0, 1), threshold=0.95, min_confident_share=0.6)
  assert q["confident_share"] == pytest.approx(2 / 6) and q["recognised"] is False


def test_classify_returns_argmax_and_its_probability():
  from unlearn_jax import evaluation
  w = np.array([[1.0, -1.0, 0.0]], np.float32)
  apply_fn = lambda v, x: x.reshape(x.shape[0], -1)[:, :1] * v["params"]
  x = np.array([[[[2.0]]], [[[-3.0]]]], np.float32)
  pred, conf = evaluation.classify(apply_fn, w, x)
  logits = np.array([[2.0, -2.0, 0.0], [-3.0, 3.0, 0.0]])
  p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  np.testing.assert_array_equal(pred, [0, 1])
  np.testing.assert_allclose(conf, p.max(-1), rtol=1e-6)
