"""saliency: the mask stages' scores and masks (SalUn, SFR-on, SNIP), by hand."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unlearn_jax.errors import UserError
from unlearn_jax.unlearning import saliency
from method_fixtures import close


SCORES = {"a": np.array([0.3, 9.0, -1.0, 4.0]), "b": {"c": np.array([[7.0, 2.0, 0.5], [8.0, 5.0, 6.0]])}}


def test_top_fraction_mask_keeps_the_largest_scores():
  mask = saliency.top_fraction_mask(SCORES, 0.5)
  flat = np.concatenate([SCORES["a"], SCORES["b"]["c"].ravel()])
  kept = np.concatenate([mask["a"], mask["b"]["c"].ravel()])
  np.testing.assert_array_equal(np.sort(flat[kept == 1]), [5.0, 6.0, 7.0, 8.0, 9.0])
  assert mask["b"]["c"].shape == (2, 3)
  assert saliency.kept_fraction(mask) == 0.5


def test_top_fraction_mask_exact_count_with_ties_and_edges():
  ties = {"a": np.ones(4), "b": np.ones((2, 3))}
  mask = saliency.top_fraction_mask(ties, 0.3)
  assert sum(int(np.sum(l)) for l in jax.tree_util.tree_leaves(mask)) == 3
  np.testing.assert_allclose(saliency.kept_fraction(mask), 0.3)
  assert saliency.kept_fraction(saliency.top_fraction_mask(SCORES, 0.0)) == 0.0
  assert saliency.kept_fraction(saliency.top_fraction_mask(SCORES, 1.0)) == 1.0
  with pytest.raises(UserError):
    saliency.top_fraction_mask(SCORES, 1.5)


def test_top_fraction_mask_breaks_ties_by_position():
  mask = saliency.top_fraction_mask({"a": np.ones(1000)}, 0.3)
  np.testing.assert_array_equal(np.flatnonzero(mask["a"]), np.arange(300))


def test_ratio_mask():
  ff = {"a": np.array([1.0, 2.0, 0.0]), "b": np.array([3.0])}
  fr = {"a": np.array([2.0, 2.0, 0.0]), "b": np.array([1.0])}
  mask = saliency.ratio_mask(ff, fr)
  np.testing.assert_array_equal(mask["a"], [0, 1, 1])
  np.testing.assert_array_equal(mask["b"], [1])


def test_accumulate_sums_and_averages_clipped_squares():
  batches = [{"a": jnp.array([2.0, 0.0]), "b": jnp.array([0.0])},   # norm 2 -> scaled to norm 1
             {"a": jnp.array([0.3, 0.0]), "b": jnp.array([0.4])}]   # norm 0.5 -> unchanged
  grad_fn = lambda params, batch: batch
  close(saliency.accumulate(grad_fn, None, batches), {"a": np.array([2.3, 0.0]), "b": np.array([0.4])})
  fisher = saliency.accumulate(grad_fn, None, batches, square=True, clip_norm=1.0)
  close(fisher, {"a": np.array([(1.0 + 0.09) / 2, 0.0]), "b": np.array([0.16 / 2])})
  with pytest.raises(ValueError):
    saliency.accumulate(grad_fn, None, [])


def test_accumulate_absolute_sums_abs_gradients():
  grads = iter([{"w": jnp.array([1.0, -2.0])}, {"w": jnp.array([-3.0, 1.0])}])
  out = saliency.accumulate(lambda p, b: next(grads), None, [0, 1], absolute=True)
  np.testing.assert_allclose(out["w"], [4.0, 3.0])


def test_save_and_load_mask_round_trip(tmp_path):
  mask = saliency.top_fraction_mask(SCORES, 0.5)
  path = str(tmp_path / "mask.msgpack")
  saliency.save_mask(path, mask)
  loaded = saliency.load_mask(path)
  assert jax.tree_util.tree_structure(loaded) == jax.tree_util.tree_structure(mask)
  for a, b in zip(jax.tree_util.tree_leaves(loaded), jax.tree_util.tree_leaves(mask)):
    assert a.dtype == jnp.float32
    np.testing.assert_array_equal(a, b)
