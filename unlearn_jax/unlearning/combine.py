"""Gradient combinations shared by the unlearning methods (optax transforms).

Every fine-tuning method here is a weighted sum of the gradients of its
objectives, optionally restricted to a subset of the parameters:

    tx = optax.chain(weighted_sum(1.0, memorize=beta), masked(), clip, adam)
    updates, s = tx.update(retain_grads, s, params, memorize_grads=g_m, mask=m)

The first objective's gradient arrives as `updates`, the others as
`<name>_grads` keyword extras (see `training.train_step`); a mask, when the
step has one, arrives as the `mask` extra.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import optax


class _Stateless(NamedTuple):
  pass


def stateless_init(params):
  """init_fn of a transform without state."""
  del params
  return _Stateless()


def weighted_sum(primary: float, **weights: float) -> optax.GradientTransformationExtraArgs:
  """updates -> primary * updates + sum_k weights[k] * <k>_grads.

  E.g. DiMUM (Eq. 11): weighted_sum(1.0, memorize=beta); gradient ascent with a
  retain loss (Eq. 5): weighted_sum(beta, forget=-1.0).
  """
  def update_fn(updates, state, params=None, **extra):
    del params
    missing = [k for k in weights if f"{k}_grads" not in extra]
    if missing:
      raise TypeError(f"weighted_sum needs the extra gradients {', '.join(k + '_grads' for k in missing)}")
    out = jax.tree_util.tree_map(lambda g: primary * g, updates)
    for k, w in weights.items():
      out = jax.tree_util.tree_map(lambda o, g, w=w: o + w * g, out, extra[f"{k}_grads"])
    return out, state

  return optax.GradientTransformationExtraArgs(stateless_init, update_fn)


def masked() -> optax.GradientTransformationExtraArgs:
  """updates -> updates * mask, with `mask` (a 0/1 tree shaped like the params) an extra arg.

  Without a mask the updates pass unchanged.  SalUn's weight saliency (Fan et
  al. 2024) multiplies the whole unlearning gradient by its mask.
  """
  def update_fn(updates, state, params=None, *, mask=None, **extra):
    del params, extra
    if mask is None:
      return updates, state
    return jax.tree_util.tree_map(lambda g, m: g * m.astype(g.dtype), updates, mask), state

  return optax.GradientTransformationExtraArgs(stateless_init, update_fn)
