"""Scissorhands (SHS; Wu & Harandi 2024) for a class-conditional DDPM.

1. SNIP connection sensitivity of every weight to the forget loss,
   s_i = |theta_i| * sum_b |d L_f(batch b) / d theta_i|  (`snip_scores`);
2. the top (1 - sparsity) fraction of weights by s (sparsity 0.99 keeps 99%) is
   reset to a fresh initialization (`reset`; a "shs" mask stage computes the mask);
3. fine-tuning with L_r - gamma L_f (gamma 0.1), `scissorhands`.

The public code restricts step 2 to a layer subset and offers a GEM-style
projection; here every parameter is eligible and there is no projection.
"""
from __future__ import annotations

import dataclasses
import jax
import jax.numpy as jnp

from unlearn_jax.errors import check_range
from unlearn_jax.unlearning import combine
from unlearn_jax.unlearning import spec


@dataclasses.dataclass(frozen=True)
class Config:
  """`config.shs`: the kept share (1 - sparsity is reset) and the forget weight of L_r - gamma L_f."""
  sparsity: float = 0.99
  gamma: float = 0.1


def snip_scores(abs_grad_sum, params):
  """|theta| * accumulated |grad L_f|."""
  return jax.tree_util.tree_map(lambda g, p: jnp.abs(g) * jnp.abs(p), abs_grad_sum, params)


def reset(params, fresh, mask):
  """params with the masked weights (mask 1) replaced by `fresh` (a new initialization)."""
  return jax.tree_util.tree_map(lambda p, f, m: jnp.where(jnp.asarray(m) > 0, f, p), params, fresh, mask)


def scissorhands(gamma: float = 0.1):
  """grad L_r - gamma grad L_f: retain objective first, `forget_grads` extra."""
  return combine.weighted_sum(1.0, forget=-gamma)


def build(config, ctx):
  """{"retain": L_r, "forget": L_f} and `scissorhands(config.shs.gamma)` (step 3), after the reset."""
  check_range("config.shs.gamma", config.shs.gamma, 0.0, 1e6)
  return ({"retain": ctx.objective("retain"), "forget": ctx.objective("forget")},
          scissorhands(config.shs.gamma), SPEC.options())


SPEC = spec.MethodSpec(section="shs", config=Config, name="shs", display="Scissorhands", build=build, mask="shs", requires_mask=True,
                       reset=True)
