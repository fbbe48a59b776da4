"""scissorhands: SNIP scores, the reset and the combination, by hand."""
import jax
import jax.numpy as jnp
import numpy as np

from unlearn_jax.unlearning import saliency, scissorhands
from method_fixtures import G, R, close


def test_snip_scores_and_reset_fraction():
  params = {"a": jnp.array([1.0, -3.0, 0.5, 2.0]), "b": jnp.array([[0.1, -4.0], [1.0, 0.0]])}
  abs_grads = {"a": jnp.array([2.0, 0.1, 4.0, 1.0]), "b": jnp.array([[5.0, 1.0], [0.2, 9.0]])}
  s = scissorhands.snip_scores(abs_grads, params)
  np.testing.assert_allclose(s["a"], [2.0, 0.3, 2.0, 2.0])
  np.testing.assert_allclose(s["b"], [[0.5, 4.0], [0.2, 0.0]])
  mask = saliency.top_fraction_mask(s, 1.0 - 0.75, field="config.shs.sparsity")   # reset 2 of 8
  assert saliency.kept_fraction(mask) == 0.25
  assert int(mask["b"][0, 1]) == 1 and int(mask["a"][0]) == 1      # 4.0 and the first 2.0 (ties by position)
  fresh = jax.tree_util.tree_map(lambda x: jnp.full_like(x, 7.0), params)
  out = scissorhands.reset(params, fresh, mask)
  changed = sum(int(np.sum(np.asarray(o) != np.asarray(p))) for o, p in zip(
      jax.tree_util.tree_leaves(out), jax.tree_util.tree_leaves(params)))
  assert changed == 2 and float(out["b"][0, 1]) == 7.0 and float(out["a"][1]) == -3.0


def test_scissorhands_combination():
  tx = scissorhands.scissorhands(0.1)
  out, _ = tx.update(R, tx.init(R), None, forget_grads=G)
  close(out, jax.tree_util.tree_map(lambda a, b: a - 0.1 * b, R, G))
