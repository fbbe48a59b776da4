"""SalUn (Fan et al. 2024, "Saliency Unlearning") for class-conditional DDPM.

    L = MSE(eps_theta(x_t, c_f), sg eps_theta(x_t, c')) + beta L_r      (DiMUM paper Eq. 6)

x_t is a noised forget image, c_f its (forgotten) condition and c' an
alternative condition (the next class by default, `dimum.alternative_classes`);
the target is the current model's own prediction under c', without gradient.
The gradient is multiplied by the saliency mask (`saliency.top_fraction_mask`
of |grad of the forget loss|, top 50%), computed once beforehand.

beta defaults to 1e-3 as in SalUn's CIFAR-10 DDPM setting (their `alpha`).
"""
from __future__ import annotations

import dataclasses
import jax.numpy as jnp
import optax

from unlearn_jax.errors import check_range
from unlearn_jax.unlearning import combine
from unlearn_jax.unlearning import core as core_lib
from unlearn_jax.unlearning import spec


@dataclasses.dataclass(frozen=True)
class Config:
  """`config.salun`: the retain weight beta (DiMUM Eq. 6) and the mask's kept share `fraction`."""
  beta: float = 1e-3
  fraction: float = 0.5


def random_label_target(alt):
  """Objective.target for SalUn's "rl" loss: the model's eps under c' (stop-gradient).

  `alt` (C,): c' = alt[c]; `alt` (C, K): c' drawn per example from row c (CORE App. C's
  per-step random alternative; `core.draw_anchor`).
  """
  alt = jnp.asarray(alt, jnp.int32)

  def target(inputs):
    c_alt = alt[inputs.labels] if alt.ndim == 1 else core_lib.draw_anchor(alt, inputs.labels, inputs.keys)
    return inputs.eps(inputs.params, c_alt)

  return target


def salun(beta: float = 1e-3) -> optax.GradientTransformationExtraArgs:
  """grad L_rl + beta grad L_r, masked: forget objective first, `retain_grads` extra, `mask` const."""
  return optax.chain(combine.weighted_sum(1.0, retain=beta), combine.masked())


def build(config, ctx):
  """{"forget": MSE to sg eps_theta(x_t, c') on D_f, "retain": L_r} and `salun(config.salun.beta)`
  (Eq. 6); c' from `ctx.alternatives` (`config.unlearn.alternative` or `.anchors`)."""
  alt = ctx.alternatives(config)
  check_range("config.salun.beta", config.salun.beta, 0.0, 1e6)
  forget = ctx.objective("forget", target=random_label_target(alt))
  return {"forget": forget, "retain": ctx.objective("retain")}, salun(config.salun.beta), SPEC.options()


SPEC = spec.MethodSpec(section="salun", config=Config, name="salun", display="SalUn", build=build, conditional=True, mask="salun")
