"""SDE marginals, priors and discretisations against closed forms."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

from unlearn_jax import sde as sde_lib
from unlearn_jax.errors import UserError

T = jnp.array([1e-3, 0.1, 0.37, 0.8, 1.0])


def _integrated_marginal(sde, t):
  """Mean coefficient and variance of the linear SDE dx = -a(t) x dt + g(t) dw, by quadrature.

  m(t) = exp(-int_0^t a), var(t) = int_0^t m(t)^2 / m(s)^2 g(s)^2 ds.
  """
  def a(s):
    drift, _ = sde.sde(jnp.ones((1, 1)), jnp.array([s]))
    return -float(drift[0, 0])

  def g2(s):
    return float(sde.sde(jnp.ones((1, 1)), jnp.array([s]))[1][0]) ** 2

  log_m = lambda s: -integrate.quad(a, 0, s)[0]
  m_t = np.exp(log_m(t))
  var = integrate.quad(lambda s: np.exp(2 * (log_m(t) - log_m(s))) * g2(s), 0, t, limit=200)[0]
  return m_t, var


@pytest.mark.parametrize("sde", [sde_lib.VPSDE(), sde_lib.SubVPSDE()])
def test_vp_marginals_match_integrated_sde(sde):
  for t in [0.05, 0.3, 0.9]:
    m_t, var = _integrated_marginal(sde, t)
    mean, std = sde.marginal_prob(jnp.ones((1, 1)), jnp.array([t]))
    np.testing.assert_allclose(float(mean[0, 0]), m_t, rtol=1e-5)
    np.testing.assert_allclose(float(std[0]) ** 2, var, rtol=1e-4)


def test_ve_marginal_variance_matches_integrated_sde():
  sde = sde_lib.VESDE(sigma_min=0.01, sigma_max=50.0)
  for t in [0.1, 0.5, 1.0]:
    _, var = _integrated_marginal(sde, t)
    _, std = sde.marginal_prob(jnp.ones((1, 1)), jnp.array([t]))
    # score_sde's VE marginal omits sigma_min^2 (the variance at t = 0).
    np.testing.assert_allclose(float(std[0]) ** 2, var + 0.01 ** 2, rtol=1e-4)


def test_ve_closed_form_values():
  sde = sde_lib.VESDE(sigma_min=0.01, sigma_max=50.0)
  x = jnp.ones((5, 3))
  mean, std = sde.marginal_prob(x, T)
  np.testing.assert_allclose(mean, x)
  np.testing.assert_allclose(std, 0.01 * 5000.0 ** np.asarray(T), rtol=1e-5)
  _, g = sde.sde(x, T)
  np.testing.assert_allclose(g, 0.01 * 5000.0 ** np.asarray(T) * np.sqrt(2 * np.log(5000.0)), rtol=1e-5)


@pytest.mark.parametrize("sde,scale", [(sde_lib.VESDE(sigma_max=7.0), 7.0), (sde_lib.VPSDE(), 1.0),
                                       (sde_lib.SubVPSDE(), 1.0)])
def test_prior_logp_and_sampling(sde, scale):
  z = jax.random.normal(jax.random.key(0), (4, 3, 2)) * scale
  expected = stats.norm(0, scale).logpdf(np.asarray(z)).reshape(4, -1).sum(-1)
  np.testing.assert_allclose(sde.prior_logp(z), expected, rtol=1e-5)
  s = sde.prior_sampling(jax.random.key(1), (20000, 2))
  np.testing.assert_allclose(np.std(s), scale, rtol=0.02)


def test_vp_discretization_is_ddpm():
  sde = sde_lib.VPSDE()
  np.testing.assert_allclose(sde.discrete_betas, np.linspace(1e-4, 0.02, 1000), rtol=1e-5)
  x = jnp.full((2, 3), 2.0)
  t = jnp.array([0.0, 1.0])
  f, G = sde.discretize(x, t)
  beta = np.array([1e-4, 0.02])
  np.testing.assert_allclose(f, np.broadcast_to((np.sqrt(1 - beta)[:, None] - 1) * 2.0, (2, 3)), rtol=1e-3)
  np.testing.assert_allclose(G, np.sqrt(beta), rtol=1e-4)


def test_ve_discretization_is_smld():
  sde = sde_lib.VESDE(N=10)
  sig = np.exp(np.linspace(np.log(0.01), np.log(50.0), 10))
  _, G = sde.discretize(jnp.zeros((3, 1)), jnp.array([0.0, 5 / 9, 1.0]))
  np.testing.assert_allclose(G, [sig[0], np.sqrt(sig[5] ** 2 - sig[4] ** 2), np.sqrt(sig[9] ** 2 - sig[8] ** 2)],
                             rtol=1e-5)


def test_reverse_and_probability_flow():
  sde = sde_lib.VPSDE()
  score = lambda x, t: -x * 3.0
  x = jnp.ones((2, 2))
  t = jnp.array([0.2, 0.6])
  drift, g = sde.sde(x, t)
  r_drift, r_g = sde.reverse(score).sde(x, t)
  np.testing.assert_allclose(r_drift, drift - (g ** 2)[:, None] * (-3.0 * x), rtol=1e-6)
  np.testing.assert_allclose(r_g, g)
  p_drift, p_g = sde.reverse(score, probability_flow=True).sde(x, t)
  np.testing.assert_allclose(p_drift, drift - 0.5 * (g ** 2)[:, None] * (-3.0 * x), rtol=1e-6)
  np.testing.assert_allclose(p_g, 0.0)
  f, G = sde.discretize(x, t)
  rf, rG = sde.reverse(score).discretize(x, t)
  np.testing.assert_allclose(rf, f - (G ** 2)[:, None] * (-3.0 * x), rtol=1e-6)


def test_ddpm_schedule():
  sch = sde_lib.DDPMSchedule()
  i = jnp.array([0, 499, 999])
  abar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
  a, s = sch.marginal_coeffs(i)
  np.testing.assert_allclose(a, np.sqrt(abar[[0, 499, 999]]), rtol=1e-5)
  np.testing.assert_allclose(a ** 2 + s ** 2, 1.0, rtol=1e-6)
  x0, n = jnp.ones((3, 2)), jnp.full((3, 2), 0.5)
  np.testing.assert_allclose(sch.q_sample(x0, i, n), np.broadcast_to(a[:, None] + 0.5 * s[:, None], (3, 2)), rtol=1e-6)
  # SGU Eq. 12 weight beta^2 / (2 sigma^2 alpha (1 - abar)) with sigma^2 = beta.
  b = np.linspace(1e-4, 0.02, 1000)[[0, 499, 999]]
  np.testing.assert_allclose(sch.vlb_weight(i), b / (2 * (1 - b) * (1 - abar[[0, 499, 999]])), rtol=1e-5)
  mean, var = sch.posterior(x0 * 2, x0, jnp.array([0, 10, 999]))
  np.testing.assert_allclose(var[0], 0.0, atol=1e-12)


def test_get_sde_unknown_name():
  with pytest.raises(UserError, match="config.sde.name"):
    sde_lib.get_sde("foo")
  assert sde_lib.get_sde("vesde", sigma_max=3.0, beta_min=1.0) == sde_lib.VESDE(sigma_max=3.0)


@pytest.mark.parametrize("sde", [sde_lib.VESDE(), sde_lib.VPSDE()], ids=["ve", "vp"])
@pytest.mark.parametrize("eps", [1e-5, 1e-3, 1e-2])
def test_sampler_grid_levels_are_score_sde_truncation(sde, eps):
  # score_sde: timestep = (t * (N - 1) / T).astype(int32) on linspace(T, eps, N), float32.
  from unlearn_jax import sampling
  levels = np.asarray(sde.timestep(sampling.time_grid(sde.T, eps, sde.N)))
  grid = np.linspace(sde.T, eps, sde.N, dtype=np.float32)
  np.testing.assert_array_equal(levels, (grid * np.float32(sde.N - 1) / np.float32(sde.T)).astype(np.int32))
  assert levels[0] == sde.N - 1
  if eps < sde.T / (sde.N - 1):   # every level once, in order, the last step at level 0
    np.testing.assert_array_equal(levels, np.arange(sde.N - 1, -1, -1))
  else:                           # eps = 1e-2: the last step at floor(eps (N - 1)) = 9, as score_sde's
    assert levels[-1] == int(eps * (sde.N - 1)) == 9


def test_timestep_truncates_within_a_level():
  sde = sde_lib.VESDE(N=11)     # levels at t = i / 10
  t = jnp.array([0.0, 0.049, 0.051, 0.0999, 0.1, 0.95, 1.0])
  np.testing.assert_array_equal(sde.timestep(t), [0, 0, 0, 0, 1, 9, 10])
