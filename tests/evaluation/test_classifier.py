"""`evaluation.classifier`: sample quality (histogram TV, confident share) and classify."""
from __future__ import annotations

import numpy as np
import pytest

from unlearn_jax import evaluation


def test_histogram_tv_hand_values():
  assert evaluation.histogram_tv([5, 5], [1, 1]) == pytest.approx(0.0)
  assert evaluation.histogram_tv([10, 0], [0, 3]) == pytest.approx(1.0)
  assert evaluation.histogram_tv([3, 1, 0], [1, 1, 2]) == pytest.approx(0.5 * (0.5 + 0.0 + 0.5))
  # over classes (0, 2) only, each renormalised: (3/3, 0) vs (1/3, 2/3)
  assert evaluation.histogram_tv([3, 1, 0], [1, 1, 2], classes=(0, 2)) == pytest.approx(2 / 3)
  assert evaluation.histogram_tv([0, 0], [1, 1]) == 1.0


def test_sample_quality_confident_share_and_recognised():
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
  w = np.array([[1.0, -1.0, 0.0]], np.float32)
  apply_fn = lambda v, x: x.reshape(x.shape[0], -1)[:, :1] * v["params"]
  x = np.array([[[[2.0]]], [[[-3.0]]]], np.float32)
  pred, conf = evaluation.classify(apply_fn, w, x)
  logits = np.array([[2.0, -2.0, 0.0], [-3.0, 3.0, 0.0]])
  p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  np.testing.assert_array_equal(pred, [0, 1])
  np.testing.assert_allclose(conf, p.max(-1), rtol=1e-6)
