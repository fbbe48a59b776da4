"""Condition dropout of an objective (the engine piece classifier-free guidance trains with):
cond_drop=1 trains on the null label, 0 keeps the labels (hand-computed eps-MSE).
(Guidance itself, (1 + w) eps(x, c) - w eps(x, null), is checked in test_sampling.py.)"""
import numpy as np

from unlearn_jax import training
from method_fixtures import DENOISE, DROPOUT, K, KEYS, LABELS, PARAMS, X, eps_np, make_spec, noised


def test_cond_drop_one_uses_the_null_label_and_zero_keeps_labels():
  def loss(labels, cond_drop):
    objective = training.Objective("retain", DENOISE, cond_drop=cond_drop)
    return training.objective_loss(PARAMS, {"x": X, "labels": labels}, KEYS, DROPOUT,
                                   make_spec(retain=objective), objective)

  null = np.full_like(LABELS, K)
  np.testing.assert_allclose(loss(LABELS, 1.0), loss(null, 0.0), rtol=1e-6)
  n = noised(KEYS)
  for labels in (LABELS, null):
    hand = np.mean((np.asarray(n.noise) - eps_np(PARAMS, n.x_t, labels)) ** 2)
    np.testing.assert_allclose(loss(labels, 0.0), hand, rtol=1e-5)
  assert abs(float(loss(LABELS, 0.0)) - float(loss(null, 0.0))) > 1e-3
