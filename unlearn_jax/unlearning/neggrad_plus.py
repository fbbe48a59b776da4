"""NegGrad+ (Kurmanji et al. 2023, "Towards Unbounded Machine Unlearning", Sec. 5):
gradient descent on the retain set and ascent on the forget set, convexly weighted,

    L = beta L_r - (1 - beta) L_f,

with L_r, L_f the ordinary denoising losses on D_r and D_f.  beta in [0, 1]: 1 is
fine-tuning on D_r, 0 is NegGrad.  Unlike gradient ascent's beta L_r - L_f (DiMUM
paper Eq. 5) the total weight is fixed, so beta trades forgetting for utility at a
constant step size.  Retain objective first, `forget_grads` extra.
"""
from __future__ import annotations

import dataclasses
from unlearn_jax.errors import check_range
from unlearn_jax.unlearning import combine
from unlearn_jax.unlearning import spec


@dataclasses.dataclass(frozen=True)
class Config:
  """`config.neggrad_plus`: beta of beta L_r - (1 - beta) L_f."""
  beta: float = 0.9


def neggrad_plus(beta: float = 0.9):
  """beta grad L_r - (1 - beta) grad L_f."""
  return combine.weighted_sum(beta, forget=-(1.0 - beta))


def build(config, ctx):
  """{"retain": L_r, "forget": L_f} and `neggrad_plus(config.neggrad_plus.beta)`."""
  check_range("config.neggrad_plus.beta", config.neggrad_plus.beta, 0.0, 1.0)
  return ({"retain": ctx.objective("retain"), "forget": ctx.objective("forget")},
          neggrad_plus(config.neggrad_plus.beta), SPEC.options())


SPEC = spec.MethodSpec(section="neggrad_plus", config=Config, name="neggrad_plus", display="NegGrad+", build=build)
