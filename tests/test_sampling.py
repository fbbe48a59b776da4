"""Samplers against closed forms for Gaussian data.

Data x_0 ~ N(mu, Sigma) in D = 2.  Every process here has an affine Gaussian kernel
x_t = m(t) x_0 + std(t) z, so p_t = N(m mu, m^2 Sigma + std^2 I) and its score and
eps are exact; a correct sampler must return N(mu, Sigma) up to discretization and
Monte-Carlo error (with B = 3000, the standard error of a mean is ~0.01).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unlearn_jax import sampling
from unlearn_jax import sde as sde_lib
from unlearn_jax.errors import UserError

B = 3000
MU = np.array([1.0, -0.5], np.float32)
S0 = 0.5
VP = sde_lib.VPSDE()
VE = sde_lib.VESDE(sigma_max=10.0)
MEAN_TOL = 0.045  # ~4.5 standard errors at S0 = 0.5, B = 3000
STD_RTOL = 0.05


def sde_coeffs(sde):
  """(m(t), std(t)), each (B,), from the SDE's perturbation kernel."""
  def coeffs(t):
    m, std = sde.marginal_prob(jnp.ones((t.shape[0], 1)), t)
    return m[:, 0], std
  return coeffs


def gaussian_score(coeffs, mu=MU, cov=S0 ** 2 * np.eye(2)):
  """Score of p_t = N(m mu, m^2 cov + std^2 I) for data N(mu, cov)."""
  lam, u = np.linalg.eigh(cov)

  def score(x, t):
    m, std = coeffs(t)
    inv = 1.0 / (m[:, None] ** 2 * lam + std[:, None] ** 2)
    return -((inv * ((x - m[:, None] * mu) @ u)) @ u.T)

  return score


def check_gaussian(x, mu=MU, s0=S0, mean_tol=MEAN_TOL, std_rtol=STD_RTOL):
  x = np.asarray(x)
  assert np.all(np.isfinite(x))
  np.testing.assert_allclose(x.mean(0), mu, atol=mean_tol)
  np.testing.assert_allclose(x.std(0), s0, rtol=std_rtol)


# ----------------------------------------------------------------------------- PC


@pytest.mark.parametrize("sde,predictor,corrector,n_steps", [
    (VP, "reverse_diffusion", "none", None),
    (VP, "reverse_diffusion", "langevin", None),
    (VP, "euler_maruyama", "none", None),
    (VP, "euler_maruyama", "langevin", 100),  # coarse: EM with dt = -1/100
    (VP, "none", "langevin", None),
    (VP, "reverse_diffusion", "none", 100),  # coarse: the grid-kernel reverse diffusion
    (VE, "reverse_diffusion", "langevin", None),
    (VE, "euler_maruyama", "none", 60),
    (VE, "none", "langevin", None),
])
def test_pc_sampler_recovers_gaussian(sde, predictor, corrector, n_steps):
  score = gaussian_score(sde_coeffs(sde))
  run = jax.jit(lambda rng: sampling.pc_sample(
      rng, sde, score, (B, 2), predictor=predictor, corrector=corrector, n_steps=n_steps))
  check_gaussian(run(jax.random.PRNGKey(0)))


def test_pc_coarse_grid_reverse_diffusion_and_denoise():
  # A 100-step grid (n != N: the grid-kernel reverse diffusion) from T down to eps = 0.3;
  # its last step goes to t = 0 with the Tweedie mean, and without denoising it adds
  # G z with G = std(0.3) on top.
  score = gaussian_score(sde_coeffs(VE))
  run = jax.jit(lambda rng: [sampling.pc_sample(
      rng, VE, score, (B, 2), corrector="none", n_steps=100, eps=0.3, denoise=d)
      for d in (True, False)])
  clean, noisy = run(jax.random.PRNGKey(3))
  check_gaussian(clean)
  np.testing.assert_allclose(np.asarray(noisy - clean).std(0), VE.sigma(0.3), rtol=0.05)


@pytest.mark.parametrize("field,kwargs", [
    ("config.sampling.predictor", dict(predictor="ancestral")),
    ("config.sampling.corrector", dict(corrector="ald")),
    ("config.sampling.n_steps", dict(n_steps=0)),
])
def test_pc_bad_config_raises_user_error(field, kwargs):
  score = gaussian_score(sde_coeffs(VP))
  with pytest.raises(UserError) as info:
    sampling.pc_sample(jax.random.PRNGKey(0), VP, score, (4, 2), **kwargs)
  assert info.value.field == field


def _smld_chain_std(sde, s0, eps):
  """Closed-form std of score_sde's native VE reverse diffusion (denoised) for data
  N(0, s0^2) and the exact score -x / v(t_k), v = s0^2 + std(t_k)^2: on the grid
  linspace(T, eps, N) step k is level N-1-k (eps < T/(N-1)), so
  x <- (1 - G_k^2 / v_k) x + G_k z with G_k^2 = sigma_i^2 - sigma_{i-1}^2 (sigma_{-1} = 0),
  and the last step returns the mean."""
  n = sde.N
  t = np.linspace(sde.T, eps, n)
  levels = np.arange(n - 1, -1, -1)
  sig = np.exp(np.linspace(np.log(sde.sigma_min), np.log(sde.sigma_max), n))
  g2 = sig[levels] ** 2 - np.where(levels > 0, sig[np.maximum(levels - 1, 0)], 0.0) ** 2
  a = 1.0 - g2 / (s0 ** 2 + sde.sigma(t) ** 2)
  var = sde.sigma_max ** 2
  for k in range(n):
    var = a[k] ** 2 * var + (g2[k] if k < n - 1 else 0.0)
  return float(np.sqrt(var))


def test_native_ve_reverse_diffusion_takes_the_final_denoising_step():
  # Data at sigma_min scale, N(0, 0.01^2): the last step (level 0, G = sigma_0 = 0.01)
  # halves the variance (Tweedie), std ~0.0073 as score_sde; a sampler whose last step
  # used level 1 (G^2 = sigma_1^2 - sigma_0^2 ~ 2e-6) would return ~0.0142.
  sde, s0 = sde_lib.VESDE(), 0.01
  expected = _smld_chain_std(sde, s0, 1e-3)
  assert 0.0070 < expected < 0.0075
  score = gaussian_score(sde_coeffs(sde), mu=np.zeros(2, np.float32), cov=s0 ** 2 * np.eye(2))
  run = jax.jit(lambda rng: sampling.pc_sample(rng, sde, score, (B, 2), corrector="none", eps=1e-3))
  x = np.asarray(run(jax.random.PRNGKey(5)))
  np.testing.assert_allclose(x.std(), expected, rtol=0.03)
  np.testing.assert_allclose(x.mean(0), 0.0, atol=5 * expected / np.sqrt(B))


# ----------------------------------------------------------------------------- ODE


@pytest.mark.parametrize("sde", [VP, VE], ids=["vp", "ve"])
def test_ode_sampler_matches_the_exact_flow(sde):
  # For isotropic Gaussian data the probability-flow ODE keeps (x_t - m mu) / sqrt(v_t)
  # constant, v = m^2 s0^2 + std^2; the Tweedie denoise at eps then gives
  # mu + m s0^2 / v (x - m mu).  (For VE the prior N(0, sigma_max^2) is not p_T, so the
  # samples are off by the prior mismatch, which the closed form includes.)
  coeffs = sde_coeffs(sde)
  score = gaussian_score(coeffs)
  x_init = sde.prior_sampling(jax.random.PRNGKey(1), (B, 2))
  run = jax.jit(lambda x: sampling.ode_sample(None, sde, score, (B, 2), x_init=x))
  x, nfe = run(x_init)

  def mv(t):
    m, std = coeffs(jnp.full((1,), t))
    return float(m[0]), float(m[0] ** 2 * S0 ** 2 + std[0] ** 2)

  (m_T, v_T), (m_e, v_e) = mv(sde.T), mv(1e-3)
  flow = m_e * MU + np.sqrt(v_e / v_T) * (np.asarray(x_init) - m_T * MU)
  np.testing.assert_allclose(x, MU + m_e * S0 ** 2 / v_e * (flow - m_e * MU), atol=2e-3)
  assert 8 <= int(nfe) < 6 * 4096
  if sde is VP:  # the VP prior matches p_T, so the samples are the data distribution
    check_gaussian(x)


# ----------------------------------------------------------------------------- DDPM / DDIM

DDPM = sde_lib.DDPMSchedule()
SMALL = sde_lib.DDPMSchedule(N=50, beta_start=1e-3, beta_end=0.3)


def ddpm_eps(schedule, mu=MU, s0=S0):
  """eps = -std * score of the discrete marginal N(a mu, a^2 s0^2 + s^2)."""
  coeffs = schedule.marginal_coeffs
  score = gaussian_score(coeffs, mu, s0 ** 2 * np.eye(2))
  return lambda x, i: -coeffs(i)[1][:, None] * score(x, i)


def test_ddpm_ancestral_recovers_gaussian():
  run = jax.jit(lambda rng: sampling.ddpm_ancestral_sample(rng, DDPM, ddpm_eps(DDPM), (B, 2)))
  check_gaussian(run(jax.random.PRNGKey(0)))


def test_ddpm_clip_x0_bounds_the_samples():
  # At i = 0 the posterior mean is x0_hat itself, so clipped samples lie in clip_range.
  run = jax.jit(lambda rng: sampling.ddpm_ancestral_sample(
      rng, SMALL, ddpm_eps(SMALL), (256, 2), clip_x0=True, clip_range=(-0.2, 0.2)))
  x = np.asarray(run(jax.random.PRNGKey(0)))
  assert np.abs(x).max() <= 0.2 + 1e-6 and np.abs(x).max() > 0.19


def test_ddim_recovers_gaussian_and_eta0_is_deterministic():
  run = jax.jit(lambda rng, x, eta: sampling.ddim_sample(
      rng, DDPM, ddpm_eps(DDPM), (B, 2), n_steps=50, eta=eta, x_init=x))
  x_init = jax.random.normal(jax.random.PRNGKey(7), (B, 2))
  a = run(jax.random.PRNGKey(0), x_init, 0.0)
  b = run(jax.random.PRNGKey(1), x_init, 0.0)
  np.testing.assert_array_equal(a, b)
  check_gaussian(a)
  c = run(jax.random.PRNGKey(0), x_init, 1.0)
  d = run(jax.random.PRNGKey(1), x_init, 1.0)
  assert np.abs(np.asarray(c - d)).mean() > 0.1  # eta > 0 injects noise


def test_ddim_eta1_all_steps_is_ddpm_with_posterior_variance():
  # Song et al.: eta = 1 over every step is DDPM ancestral sampling with sigma^2 = beta~.
  # Both samplers draw step k's noise from split(rng_loop, n)[k], so the paths coincide.
  eps_fn = ddpm_eps(SMALL)
  x_init = jax.random.normal(jax.random.PRNGKey(7), (64, 2))
  rng = jax.random.PRNGKey(5)
  ddim = jax.jit(lambda r: sampling.ddim_sample(
      r, SMALL, eps_fn, (64, 2), n_steps=SMALL.N, eta=1.0, x_init=x_init))(rng)
  ddpm = jax.jit(lambda r: sampling.ddpm_ancestral_sample(
      r, SMALL, eps_fn, (64, 2), variance="posterior", x_init=x_init))(rng)
  np.testing.assert_allclose(ddim, ddpm, atol=2e-4)


def test_ddim_timesteps_are_strided_and_validated():
  np.testing.assert_array_equal(sampling.ddim_timesteps(1000, 4), [999, 666, 333, 0])
  with pytest.raises(UserError):
    sampling.ddim_timesteps(1000, 1001)


# ----------------------------------------------------------------------------- guidance


def test_guided_eps_fn_hand_values_and_one_batched_call():
  calls = []

  def eps_apply(x, t, labels):
    calls.append(x.shape[0])
    return x * labels[:, None] + t[:, None]

  x = jnp.array([[1.0, 2.0], [3.0, 4.0]])
  t = jnp.array([0.5, 0.25])
  labels = jnp.array([2.0, 3.0])
  # eps_c = [[2.5, 4.5], [9.25, 12.25]], eps_null = [[10.5, 20.5], [30.25, 40.25]] (null = 10)
  out = sampling.guided_eps_fn(eps_apply, labels, 10.0, 2.0)(x, t)
  np.testing.assert_allclose(out, [[-13.5, -27.5], [-32.75, -43.75]])
  assert calls == [4]
  out = sampling.guided_eps_fn(eps_apply, labels, 10.0, 0.0)(x, t)
  np.testing.assert_allclose(out, [[2.5, 4.5], [9.25, 12.25]])
  assert calls == [4, 2]


# ----------------------------------------------------------------------------- inpainting / reconstruction


def test_inpaint_keeps_known_and_samples_the_conditional():
  rho = 0.8
  cov = S0 ** 2 * np.array([[1.0, rho], [rho, 1.0]])
  score = gaussian_score(sde_coeffs(VP), MU, cov)
  x0 = np.random.default_rng(0).multivariate_normal(MU, cov, size=B).astype(np.float32)
  mask = jnp.array([1.0, 0.0])  # broadcast over the batch
  run = jax.jit(lambda rng: sampling.inpaint(rng, VP, score, jnp.asarray(x0), mask, n_steps=500))
  x = np.asarray(run(jax.random.PRNGKey(1)))
  np.testing.assert_allclose(x[:, 0], x0[:, 0], atol=1e-6)
  # x_2 | x_1 ~ N(mu_2 + rho (x_1 - mu_1), s0^2 (1 - rho^2)).
  resid = x[:, 1] - (MU[1] + rho * (x0[:, 0] - MU[0]))
  assert abs(resid.mean()) < 0.03
  np.testing.assert_allclose(resid.std(), S0 * np.sqrt(1 - rho ** 2), rtol=0.07)
  np.testing.assert_allclose(np.polyfit(x0[:, 0], x[:, 1], 1)[0], rho, atol=0.06)


def test_reconstruct_correlation_matches_closed_form():
  # recon ~ p(x_0 | x_t), x_t ~ p(x_t | x0): corr(recon, x0) = m^2 s0^2 / (m^2 s0^2 + std^2)
  # (0.40 at t = 0.3, s0 = 1), against corr(x_t, x0) = m s0 / sqrt(v) = 0.63 for x_t itself.
  s0, t_start = 1.0, 0.3
  score = gaussian_score(sde_coeffs(VP), MU, s0 ** 2 * np.eye(2))
  x0 = (MU + s0 * np.random.default_rng(0).standard_normal((B, 2))).astype(np.float32)
  run = jax.jit(lambda rng: sampling.reconstruct(rng, VP, score, jnp.asarray(x0), t_start))
  x = np.asarray(run(jax.random.PRNGKey(2)))
  m, std = sde_coeffs(VP)(jnp.full((1,), t_start))
  expected = float(m[0] ** 2 * s0 ** 2 / (m[0] ** 2 * s0 ** 2 + std[0] ** 2))
  corr = [np.corrcoef(x0[:, d], x[:, d])[0, 1] for d in range(2)]
  np.testing.assert_allclose(corr, expected, atol=0.05)
  check_gaussian(x, MU, s0, mean_tol=0.09)


def test_reconstruct_validates_t_start():
  score = gaussian_score(sde_coeffs(VP))
  with pytest.raises(UserError) as info:
    sampling.reconstruct(jax.random.PRNGKey(0), VP, score, jnp.zeros((4, 2)), 1.5)
  assert info.value.field == "config.sampling.t_start"
