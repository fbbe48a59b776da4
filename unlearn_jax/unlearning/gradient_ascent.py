"""Gradient ascent on the forget set with a retain loss (DiMUM paper Eq. 5):

    L_1 = beta E_{D_r} || eps - eps_theta(x_t | c_r) ||^2 - E_{D_u} || eps - eps_theta(x_t | c_u) ||^2.

The unlearning term is unbounded below (divergent): the paper's example of a
loss that DiMRA reverses.  Retain objective first, `forget_grads` extra.

NegGrad is the same ascent without the retain term, -grad L_u alone.  Both methods live
here (`GA`, `NEGGRAD`: `SPECS`), as they share the forget objective and the paper's Eq. 5.
"""
from __future__ import annotations

import dataclasses
from unlearn_jax.errors import check_range
from unlearn_jax.unlearning import combine
from unlearn_jax.unlearning import spec


@dataclasses.dataclass(frozen=True)
class Config:
  """`config.ga`: the retain weight beta of beta g_r - g_f (DiMUM Eq. 5)."""
  beta: float = 1.0


def gradient_ascent(beta: float = 1.0):
  """beta grad L_r - grad L_u (Eq. 5)."""
  return combine.weighted_sum(beta, forget=-1.0)


def neggrad():
  """NegGrad: -grad L_u alone (gradient ascent on the forget set, no retain term)."""
  return combine.weighted_sum(-1.0)


def build_ga(config, ctx):
  """{"retain": L_r, "forget": L_u} and `gradient_ascent(config.ga.beta)`."""
  check_range("config.ga.beta", config.ga.beta, 0.0, 1e6)
  return ({"retain": ctx.objective("retain"), "forget": ctx.objective("forget")},
          gradient_ascent(config.ga.beta), GA.options())


def build_neggrad(config, ctx):
  """{"forget": L_u} and `neggrad()`."""
  del config
  return {"forget": ctx.objective("forget")}, neggrad(), NEGGRAD.options()


GA = spec.MethodSpec(section="ga", config=Config, name="ga", display="Gradient ascent", build=build_ga)
NEGGRAD = spec.MethodSpec(name="neggrad", display="NegGrad", build=build_neggrad)
SPECS = (GA, NEGGRAD)
