"""SFR-on ("Sfront"; Huang et al. 2024, "Unified gradient-based machine unlearning
with remain geometry enhancement"), the online variant as its public DDPM code runs it.

Each iteration k = 0..K-1 is two optimiser steps sharing one Adam:

  1. a *forget step*: weighted gradient ascent  -sum_i w_i l_i  on a D_f batch,
     w_i proportional to l_i^(-1/2) (normalised, no gradient through w), scaled by
     alpha_k = alpha_max (1 + cos(pi k / K)) / 2 and restricted to the weights
     whose forget Fisher is at least their retain Fisher (`saliency.ratio_mask`);
  2. a *remain step*: the plain loss on a D_r batch, unmasked.

In the engine this is `StepSpec(alternate=True)` with objectives (forget, retain):
even steps are forget steps, odd steps remain steps.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from unlearn_jax.errors import check_range
from unlearn_jax.unlearning import spec


@dataclasses.dataclass(frozen=True)
class Config:
  """`config.sfron`: the largest forget weight alpha_max."""
  alpha_max: float = 10.0


def weighted_ascent(per_example: jax.Array) -> jax.Array:
  """-sum_i w_i l_i with w = l^-1/2 / sum(l^-1/2), w held constant (Objective.reduce).

  `per_example` is the global batch's (the step is jitted over the mesh), so the weights
  are normalised over the whole batch on any number of devices.
  """
  w = jax.lax.stop_gradient(jnp.maximum(per_example, 1e-12) ** -0.5)
  return -jnp.sum(w * per_example) / jnp.sum(w)


class SFRonState(NamedTuple):
  count: jax.Array


def alpha_schedule(k, iterations: int, alpha_max: float = 10.0):
  """alpha_k = alpha_max (1 + cos(pi k / K)) / 2."""
  return alpha_max * 0.5 * (1.0 + jnp.cos(jnp.pi * k / max(iterations, 1)))


def sfron(iterations: int, alpha_max: float = 10.0) -> optax.GradientTransformationExtraArgs:
  """Scales and masks forget-step gradients (phase 0); passes remain-step ones (phase 1)."""
  def init_fn(params):
    del params
    return SFRonState(jnp.zeros((), jnp.int32))

  def update_fn(updates, state, params=None, *, phase, mask=None, **extra):
    del params, extra
    forget = phase == 0
    scale = jnp.where(forget, alpha_schedule(state.count // 2, iterations, alpha_max), 1.0)

    def one(g, m=None):
      g = g * scale
      if m is not None:
        g = jnp.where(forget, g * m.astype(g.dtype), g)
      return g

    out = (jax.tree_util.tree_map(one, updates) if mask is None
           else jax.tree_util.tree_map(one, updates, mask))
    return out, SFRonState(state.count + 1)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def build(config, ctx):
  """{"forget": weighted ascent on D_f, "retain": L_r}, alternating, and `sfron(K, alpha_max)`
  with K = steps // 2 iterations (two steps each)."""
  check_range("config.sfron.alpha_max", config.sfron.alpha_max, 0.0, 1e6)
  forget = ctx.objective("forget", reduce=weighted_ascent)
  return ({"forget": forget, "retain": ctx.objective("retain")},
          sfron(max(ctx.steps // 2, 1), config.sfron.alpha_max), SPEC.options())


SPEC = spec.MethodSpec(section="sfron", config=Config, name="sfron", display="SFR-on (Sfront)", build=build, mask="sfron", alternate=True)
