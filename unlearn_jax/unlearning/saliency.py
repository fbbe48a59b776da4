"""Parameter masks computed once, before unlearning, as their own stage.

* SalUn (Fan et al. 2024): the saliency of each weight is |sum over the forget
  set of the gradient of the forget loss|; the mask keeps the top `fraction`
  (default 0.5) of all weights, ranked globally.
* SFR-on (Huang et al. 2024, "Sfront"): diagonal Fishers F_f, F_r of the loss on
  D_f and D_r (per-batch gradients clipped to norm 1, squared, averaged); the
  forget steps only touch weights with F_f / F_r >= 1.

Both are 0/1 trees shaped like the parameters (uint8 on disk, see `save_mask`).
"""
from __future__ import annotations

from typing import Callable, Iterable

import flax
import jax
import jax.numpy as jnp
import numpy as np

from unlearn_jax import checkpoints
from unlearn_jax.errors import check_range


def accumulate(grad_fn: Callable, params, batches: Iterable, *, square: bool = False,
               clip_norm: float = 0.0, absolute: bool = False):
  """sum_b g_b (square=False), sum_b |g_b| (absolute=True, Scissorhands' SNIP) or
  mean_b clip(g_b)^2 (square=True) over `batches`.

  `grad_fn(params, batch) -> grads` (jitted by the caller).  With `clip_norm > 0`
  each batch gradient is first scaled to global norm <= clip_norm.
  """
  total, n = None, 0
  for batch in batches:
    g = grad_fn(params, batch)
    if clip_norm > 0:
      norm = jnp.sqrt(sum(jnp.sum(x ** 2) for x in jax.tree_util.tree_leaves(g)))
      g = jax.tree_util.tree_map(lambda x: x * jnp.minimum(1.0, clip_norm / (norm + 1e-12)), g)
    if square:
      g = jax.tree_util.tree_map(jnp.square, g)
    elif absolute:
      g = jax.tree_util.tree_map(jnp.abs, g)
    total = g if total is None else jax.tree_util.tree_map(jnp.add, total, g)
    n += 1
  if total is None:
    raise ValueError("accumulate needs at least one batch")
  return jax.tree_util.tree_map(lambda x: x / n, total) if square else total


def top_fraction_mask(scores, fraction: float, field: str = "config.salun.fraction"):
  """1 for exactly round(fraction * P) weights with the largest scores (global ranking), else 0.

  Ties at the threshold are broken by position, so the kept count is exact.
  """
  check_range(field, fraction, 0.0, 1.0)
  leaves, treedef = jax.tree_util.tree_flatten(scores)
  flat = np.concatenate([np.asarray(l, np.float64).ravel() for l in leaves]) if leaves else np.zeros(0)
  k = int(round(fraction * flat.size))
  keep = np.zeros(flat.size, np.uint8)
  if k > 0:
    keep[np.argsort(-flat, kind="stable")[:k]] = 1
  out, i = [], 0
  for l in leaves:
    out.append(keep[i:i + np.size(l)].reshape(np.shape(l)))
    i += np.size(l)
  return jax.tree_util.tree_unflatten(treedef, out)


def ratio_mask(fisher_forget, fisher_retain):
  """SFR-on's m = [F_f / F_r >= 1], written F_f >= F_r (no division; 0/0 kept)."""
  return jax.tree_util.tree_map(lambda f, r: (np.asarray(f) >= np.asarray(r)).astype(np.uint8),
                                fisher_forget, fisher_retain)


def kept_fraction(mask) -> float:
  leaves = jax.tree_util.tree_leaves(mask)
  return float(sum(np.sum(l) for l in leaves) / max(sum(np.size(l) for l in leaves), 1))


def save_mask(path: str, mask, dtype=np.uint8) -> None:
  """Writes the mask (uint8 leaves, or `dtype` for a real-valued tree such as a Fisher;
  msgpack) atomically."""
  mask = jax.tree_util.tree_map(lambda m: np.asarray(m, dtype), mask)
  data = flax.serialization.msgpack_serialize(flax.serialization.to_state_dict(mask))

  def write(tmp):
    with open(tmp, "wb") as f:
      f.write(data)
  checkpoints.atomic_write(path, write)


def load_mask(path: str):
  """The mask as nested dicts of float32 arrays (multiplies gradients directly)."""
  with open(path, "rb") as f:
    tree = flax.serialization.msgpack_restore(f.read())
  return jax.tree_util.tree_map(lambda m: jnp.asarray(m, jnp.float32), tree)
