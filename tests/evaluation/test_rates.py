"""`evaluation.rates`: unlearning ratio, attack rate (AR), top-k match rate, AR_CL."""
from __future__ import annotations

import math

import numpy as np
import pytest

from unlearn_jax import evaluation
from unlearn_jax.errors import UserError


def test_attack_rate_single_target():
  assert evaluation.attack_rate(np.array([3, 3, 1, 0]), (3,)) == 0.5
  assert evaluation.attack_rate(np.array([3, 3, 1, 0]), 3) == 0.5
  assert evaluation.attack_rate(np.array([1, 2, 0]), [5]) == 0.0


def test_attack_rate_multiple_targets():
  predicted = np.array([3, 3, 1, 0, 2, 7, 1, 1])
  assert evaluation.attack_rate(predicted, [1, 7]) == pytest.approx(4 / 8)
  assert evaluation.attack_rate(predicted, np.array([0, 1, 2, 3, 7])) == 1.0


def test_attack_rate_empty_is_nan():
  assert math.isnan(evaluation.attack_rate(np.zeros((0,), np.int32), (3,)))
  assert math.isnan(evaluation.top_k_attack_rate(np.zeros((0, 4)), (3,), k=2))


def test_attack_rate_with_top_k_predictions():
  predicted = np.array([0, 1, 2])
  top_k = np.array([[0, 3], [1, 2], [2, 3]])
  assert evaluation.attack_rate(predicted, 3, top_k_predictions=top_k) == pytest.approx(2 / 3)
  with pytest.raises(ValueError):
    evaluation.attack_rate(predicted, 3, top_k_predictions=top_k[:2])


def test_attack_rate_bad_targets():
  with pytest.raises(UserError):
    evaluation.attack_rate(np.array([1, 2]), [])


# Rows: argmax, then 2nd and 3rd best classes.
_LOGITS = np.array([
    [5.0, 1.0, 0.0, 2.0, -1.0],  # order 0, 3, 1, 2, 4
    [0.0, 4.0, 3.0, -2.0, 1.0],  # order 1, 2, 4, 0, 3
    [1.0, 0.5, 9.0, 0.0, 8.0],   # order 2, 4, 0, 1, 3
    [0.0, 0.0, 0.0, 7.0, 0.0],   # order 3, 0, 1, 2, 4 (ties: lower index first)
])


def test_top_k_attack_rate_k1_matches_argmax():
  for target in range(5):
    expected = evaluation.attack_rate(np.argmax(_LOGITS, axis=1), (target,))
    assert evaluation.top_k_attack_rate(_LOGITS, (target,), k=1) == expected
  assert evaluation.top_k_attack_rate(_LOGITS, (3,), k=1) == 0.25


def test_top_k_attack_rate_k3():
  # Top-3 sets: {0,3,1}, {1,2,4}, {2,4,0}, {3,0,1}.
  assert evaluation.top_k_attack_rate(_LOGITS, (3,), k=3) == 0.5
  assert evaluation.top_k_attack_rate(_LOGITS, (4,), k=3) == 0.5
  assert evaluation.top_k_attack_rate(_LOGITS, (0,), k=3) == 0.75
  assert evaluation.top_k_attack_rate(_LOGITS, (2, 3), k=3) == 1.0


def test_top_k_bad_k():
  with pytest.raises(UserError):
    evaluation.top_k_attack_rate(_LOGITS, (0,), k=0)
  with pytest.raises(UserError):
    evaluation.top_k_attack_rate(_LOGITS, (0,), k=6)


def test_topk_match_rate_and_ar_cl():
  logits = np.array([[0.1, 0.5, 0.3, 0.2],    # order 1 2 3 0
                     [0.9, 0.0, 0.8, 0.7],    # order 0 2 3 1
                     [0.2, 0.2, 0.1, 0.0],    # tie: order 0 1 2 3
                     [0.0, 0.1, 0.2, 0.3]])   # order 3 2 1 0
  labels = np.array([2, 1, 1, 1])
  # ranks of the labels: 1, 3, 1, 2
  assert evaluation.topk_match_rate(logits, labels, k=1) == 0.0
  assert evaluation.topk_match_rate(logits, labels, k=2) == pytest.approx(2 / 4)
  assert evaluation.topk_match_rate(logits, labels, k=3) == pytest.approx(3 / 4)
  assert evaluation.topk_match_rate(logits, labels, k=4) == 1.0
  assert evaluation.topk_match_rate(logits, 0, k=1) == pytest.approx(2 / 4)  # one label for all rows
  rng = np.random.default_rng(0)
  z = rng.normal(size=(50, 7))
  z[:5, 3] = z[:5, 1]  # some ties
  y = rng.integers(0, 7, 50)
  assert evaluation.topk_match_rate(z, y, k=1) == pytest.approx(np.mean(np.argmax(z, 1) == y))
  assert evaluation.ar_cl(logits, 0) == pytest.approx(2 / 4)
  assert evaluation.ar_cl(logits, [1, 0, 0, 3]) == 1.0
  assert math.isnan(evaluation.topk_match_rate(np.zeros((0, 3)), 0)) and math.isnan(evaluation.ar_cl(np.zeros((0, 3)), 0))
  with pytest.raises(UserError):
    evaluation.topk_match_rate(logits, labels, k=5)
