"""NLL over a data set: bits/dim under the probability-flow ODE.

Test data of the retained and the forgotten classes, under
`likelihood.get_likelihood_fn`; image data uniformly dequantized, with
score_sde's offset convention.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from unlearn_jax import console
from unlearn_jax import data as data_lib
from unlearn_jax import mesh as mesh_lib


def dataset_nll(nll_fn: Callable, params, x: np.ndarray, rng: jax.Array, *, batch_size: int,
                passes: int = 1, is_image: bool = True, centered: bool = False) -> float:
  """Mean bits/dim of `x` over `passes` passes (fresh dequantization and Hutchinson noise each).

  `nll_fn(params, x, rng) -> (bpd_B, ...)` from `likelihood.get_likelihood_fn`;
  image data `x` in [0, 1] is dequantized as (U + 255 x) / 256 then scaled
  (score_sde's convention); toy data is used as is.  Each batch is padded (by
  repetition) to `batch_size` rounded up to a multiple of the device count, so the jitted
  function sees one shape, and split over the mesh (`mesh.current()`).
  """
  m = mesh_lib.current()
  n = len(x)
  padded = mesh_lib.round_up(batch_size, m)
  placed = mesh_lib.put(params)
  total, count = 0.0, 0
  progress = console.Progress("NLL", n * passes, "examples")
  for p in range(passes):
    for i in range(0, n, batch_size):
      chunk = x[i:i + batch_size]
      k = len(chunk)
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], padded - k, 0)])
      key = jax.random.fold_in(jax.random.fold_in(rng, p), i)
      k_deq, k_nll = jax.random.split(key)
      xb = jnp.asarray(chunk)
      if is_image:
        xb = data_lib.scaler(data_lib.dequantize(k_deq, xb), centered)
      out = nll_fn(placed, mesh_lib.put(np.asarray(xb), mesh_lib.batch(m)), mesh_lib.put(k_nll, mesh_lib.replicated(m)))
      bpd = mesh_lib.to_host(out[0])[:k]
      total += float(bpd.sum())
      count += k
      progress.update(count)
  return total / max(count, 1)
