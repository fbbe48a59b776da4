"""Gradient ascent on the forget set with a retain loss (DiMUM paper Eq. 5):

    L_1 = beta E_{D_r} || eps - eps_theta(x_t | c_r) ||^2 - E_{D_u} || eps - eps_theta(x_t | c_u) ||^2.

The unlearning term is unbounded below (divergent): the paper's example of a
loss that DiMRA reverses.  Retain objective first, `forget_grads` extra.
"""
from __future__ import annotations

from unlearn_jax.unlearning import combine


def gradient_ascent(beta: float = 1.0):
  """beta grad L_r - grad L_u (Eq. 5)."""
  return combine.weighted_sum(beta, forget=-1.0)


def neggrad():
  """NegGrad: -grad L_u alone (gradient ascent on the forget set, no retain term)."""
  return combine.weighted_sum(-1.0)
