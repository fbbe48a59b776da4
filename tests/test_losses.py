"""Per-example losses and the SGU transform against hand-computed values."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from unlearn_jax import losses, score
from unlearn_jax import sde as sde_lib
from unlearn_jax.errors import UserError
from unlearn_jax.unlearning import sgu

EPS = jnp.array([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]])
Z = jnp.array([[0.5, 1.0, -2.0], [1.0, -1.0, 2.0]])
W = jnp.array([2.0, 0.5])


def test_denoising_loss_hand_values():
  # (z - eps)^2 rows: [0.25, 9, 6.25] -> 15.5 ; [1, 16, 9] -> 26
  np.testing.assert_allclose(losses.denoising_loss(EPS, Z), [15.5, 26.0])
  np.testing.assert_allclose(losses.denoising_loss(EPS, Z, W), [31.0, 13.0])
  np.testing.assert_allclose(losses.denoising_loss(EPS, Z, reduce="mean"), [15.5 / 3, 26.0 / 3])


def test_orthogonal_loss_hand_values():
  # (eps * z)^2 rows: [0.25, 4, 1] -> 5.25 ; [0, 9, 4] -> 13   (SGU Eq. 9 / 13)
  np.testing.assert_allclose(losses.orthogonal_loss(EPS, Z), [5.25, 13.0])
  np.testing.assert_allclose(losses.orthogonal_loss(EPS, Z, W), [10.5, 6.5])


def test_obtuse_loss_hand_values():
  # <eps, z> rows: 0.5 - 2 - 1 = -2.5 ; 0 - 3 - 2 = -5   (SGU Eq. 10 / 14)
  np.testing.assert_allclose(losses.obtuse_loss(EPS, Z), [-2.5, -5.0])
  np.testing.assert_allclose(losses.obtuse_loss(EPS, Z, W), [-5.0, -2.5])


def test_obtuse_in_score_form_is_eq10():
  """With eps_hat = -std * s, <eps_hat, z> = std^2 <s, grad log p_0t> and grad log p_0t = -z / std."""
  std = jnp.array([0.3, 2.0])
  s = score.to_score(EPS, std, "eps")
  grad_log_p0t = -Z / std[:, None]
  eq10 = std ** 2 * jnp.sum(s * grad_log_p0t, -1)
  np.testing.assert_allclose(losses.obtuse_loss(EPS, Z), eq10, rtol=1e-6)
  eq9 = std ** 4 * jnp.sum((s * grad_log_p0t) ** 2, -1)
  np.testing.assert_allclose(losses.orthogonal_loss(EPS, Z), eq9, rtol=1e-5)


def test_dsm_equals_score_form():
  """sum (z - eps_hat)^2 = std^2 || s + z / std ||^2 (score_sde's DSM, lambda = std^2)."""
  std = jnp.array([0.3, 2.0])
  s = score.to_score(EPS, std, "eps")
  np.testing.assert_allclose(losses.denoising_loss(EPS, Z), std ** 2 * jnp.sum((s + Z / std[:, None]) ** 2, -1),
                             rtol=1e-5)


def test_perturb_marginals_and_weights():
  sde = sde_lib.VPSDE()
  x0 = jnp.full((4, 2), 3.0)
  t = jnp.array([0.1, 0.2, 0.5, 1.0])
  n = losses.perturb(sde, x0, jax.random.key(0), "likelihood", t=t)
  mean, std = sde.marginal_prob(x0, t)
  np.testing.assert_allclose(n.x_t, mean + std[:, None] * n.noise, rtol=1e-6)
  np.testing.assert_allclose(n.time_input, t)
  np.testing.assert_allclose(n.weight, sde.beta(t) / std ** 2, rtol=1e-5)
  ddpm = sde_lib.DDPMSchedule()
  nd = losses.perturb(ddpm, x0, jax.random.key(1), "vlb")
  assert nd.t.dtype == jnp.int32 and np.all((nd.t >= 0) & (nd.t < 1000))
  np.testing.assert_allclose(nd.weight, ddpm.vlb_weight(nd.t))
  np.testing.assert_allclose(nd.time_input, nd.t / 1000.0)


def test_sgu_transform_combines_and_chains():
  retain = {"w": jnp.array([1.0, 2.0])}
  forget = {"w": jnp.array([-4.0, 8.0])}
  tx = sgu.sgu(0.75)
  upd, _ = tx.update(retain, tx.init(retain), forget_grads=forget)
  np.testing.assert_allclose(upd["w"], [0.75 - 1.0, 1.5 + 2.0])
  chained = optax.chain(sgu.sgu(0.5), optax.sgd(1.0))
  upd, _ = chained.update(retain, chained.init(retain), retain, forget_grads=forget)
  np.testing.assert_allclose(upd["w"], [1.5, -5.0])


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_sgu_alpha_out_of_range(alpha):
  with pytest.raises(UserError, match="config.sgu.alpha"):
    sgu.sgu(alpha)


def test_unknown_weighting():
  with pytest.raises(UserError, match="config.training.weighting"):
    losses.loss_weight(sde_lib.VPSDE(), jnp.ones(2), "bogus")
