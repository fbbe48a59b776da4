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
  assert math.isnan(evaluation.topk_match_rate(np.zeros((0, 4)), [[3]], k=2))


def test_topk_match_rate_top2_sets():
  # (was attack_rate(top_k_predictions=...)): top-2 sets {0, 3}, {1, 2}, {2, 3}
  logits = np.array([[2.0, 0.0, 0.0, 1.0], [0.0, 2.0, 1.0, 0.0], [0.0, 0.0, 2.0, 1.0]])
  assert evaluation.topk_match_rate(logits, [[3]], k=2) == pytest.approx(2 / 3)
  with pytest.raises(ValueError):
    evaluation.topk_match_rate(logits, [3, 3], k=2)   # 2 labels for 3 rows


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


def test_topk_match_rate_k1_matches_argmax():
  for target in range(5):
    expected = evaluation.attack_rate(np.argmax(_LOGITS, axis=1), (target,))
    assert evaluation.topk_match_rate(_LOGITS, [[target]], k=1) == expected
  assert evaluation.topk_match_rate(_LOGITS, [[3]], k=1) == 0.25


def test_topk_match_rate_k3_target_sets():
  # Top-3 sets: {0,3,1}, {1,2,4}, {2,4,0}, {3,0,1}.
  assert evaluation.topk_match_rate(_LOGITS, [[3]], k=3) == 0.5
  assert evaluation.topk_match_rate(_LOGITS, [[4]], k=3) == 0.5
  assert evaluation.topk_match_rate(_LOGITS, [[0]], k=3) == 0.75
  assert evaluation.topk_match_rate(_LOGITS, [[2, 3]], k=3) == 1.0
  # per-row label sets: row 0 {4, 2} misses, row 1 {0, 4} hits 4, rows 2-3 as for [[2, 3]]
  assert evaluation.topk_match_rate(_LOGITS, [[4, 2], [0, 4], [2, 3], [2, 3]], k=3) == 0.75
  with pytest.raises(ValueError):
    evaluation.topk_match_rate(_LOGITS, np.zeros((1, 0), np.int64), k=3)   # an empty label set


def test_top_k_bad_k():
  with pytest.raises(UserError):
    evaluation.topk_match_rate(_LOGITS, [[0]], k=0)
  with pytest.raises(UserError):
    evaluation.topk_match_rate(_LOGITS, [[0]], k=6)


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


def _tied_logits(n: int, c: int, seed: int) -> np.ndarray:
  z = np.random.default_rng(seed).normal(size=(n, c)).astype(np.float32)
  z[: n // 4, 2] = z[: n // 4, 0]                 # exact ties: the lower index ranks first
  z[n // 4: n // 2] = np.round(z[n // 4: n // 2])
  return z


def test_topk_k1_is_the_digits_ar():
  """k = 1 is the AR of class-conditional digits: pipeline.forget_rates'
  attack_rate(evaluation.predict(...), forget_labels), several forgotten classes included."""
  z = _tied_logits(64, 10, 0)
  apply_fn = lambda v, x: x.reshape(x.shape[0], -1) * v["params"]
  pred = evaluation.predict(apply_fn, np.ones((1, 10), np.float32), z[:, None, None, :], batch_size=16)
  for forget in ((0,), (2,), (1, 7), (0, 2, 5)):
    ar = evaluation.attack_rate(pred, forget)
    assert evaluation.topk_match_rate(z, [forget], k=1) == ar
    assert evaluation.topk_match_rate(z, [list(forget)] * len(z), k=1) == ar
  alt = np.random.default_rng(1).integers(0, 10, len(z))
  assert evaluation.ar_cl(z, alt) == evaluation.topk_match_rate(z, alt, k=1)


def test_topk_k3_is_the_unlearncanvas_ar_mu():
  """k = 3 is UnlearnCanvas's AR_MU (DiMUM Sec. VI-B; sd_experiment.forget_rates): an image
  counts when its prompt's style is among the style classifier's 3 best classes (a stable
  descending sort: ties go to the lower index)."""
  z = _tied_logits(64, 6, 2)
  style_true = np.random.default_rng(3).choice([1, 4], size=len(z))   # two forgotten styles
  top3 = np.argsort(-z, axis=1, kind="stable")[:, :3]
  expected = float(np.mean([s in row for s, row in zip(style_true, top3)]))
  assert evaluation.topk_match_rate(z, style_true, k=3) == expected
  assert evaluation.topk_match_rate(z, style_true) == expected          # k = 3 is the default
  assert evaluation.topk_match_rate(z, style_true, k=1) == float(np.mean(top3[:, 0] == style_true))
