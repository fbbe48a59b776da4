"""`evaluation.nll`: NLL over a data set (dequantization, scaling, padding of the last batch)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unlearn_jax import evaluation


@pytest.mark.parametrize("centered", [False, True])
def test_dataset_nll_dequantizes_then_scales(centered):
  """dataset_nll feeds nll_fn scaler((U + 255 x) / 256), U ~ U[0, 1): a stub nll_fn returning its
  input's per-example mean / min / max recovers the mean (0.5 + 255 x) / 256 and the bounds."""
  x = np.concatenate([np.full((6, 8, 8, 1), 51 / 255), np.full((4, 8, 8, 1), 200 / 255)]).astype(np.float32)
  sc = (lambda v: 2 * v - 1) if centered else (lambda v: v)
  stat = lambda f: (lambda params, xb, rng: (f(xb.reshape(xb.shape[0], -1), -1),))
  run = lambda f: evaluation.dataset_nll(stat(f), None, x, jax.random.key(0), batch_size=4, passes=2,
                                         is_image=True, centered=centered)
  levels = np.array([51.0] * 6 + [200.0] * 4)
  np.testing.assert_allclose(run(jnp.mean), sc((0.5 + levels) / 256).mean(), atol=3e-4)
  assert sc(levels / 256).mean() <= run(jnp.min) and run(jnp.max) < sc((levels + 1) / 256).mean()
  assert run(jnp.max) - run(jnp.min) > sc(0.5 / 256) - sc(0.0)           # the noise is there
  toy = evaluation.dataset_nll(stat(jnp.mean), None, x, jax.random.key(0), batch_size=4, is_image=False)
  np.testing.assert_allclose(toy, levels.mean() / 255, rtol=1e-6)         # toy data as is
