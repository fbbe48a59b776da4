"""Tests for unlearn_jax.likelihood against closed forms.

Data x ~ N(mu, Sigma) (full covariance, Sigma = U diag(lam) U^T) has, under the VP
and VE SDEs, Gaussian marginals p_t = N(m_t mu, C_t) with C_t = m_t^2 Sigma + s_t^2 I,
so the score -(C_t)^{-1} (x - m_t mu) is exact at every t.  The probability-flow ODE
is then linear and commutes with Sigma: in the eigenbasis each coordinate of
x - m_t mu scales by sqrt(c_i(t) / c_i(eps)), c_i = m^2 lam_i + s^2, so

  z = m_T mu + U diag(sqrt(c_T / c_eps)) U^T (x - m_eps mu),
  int_eps^T J(t) dt = M = U diag(1/2 log(c_T / c_eps)) U^T,

and the estimator's exact target is delta_logp = tr M; with a fixed Hutchinson
probe v it is exactly v^T M v (the probe is held for the whole solve).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unlearn_jax import likelihood as lk
from unlearn_jax import sde as sde_lib
from unlearn_jax.errors import UserError

D = 6
BATCH = 4
LN2 = np.log(2.0)
SDES = {"vp": sde_lib.VPSDE(), "ve": sde_lib.VESDE(sigma_min=0.01, sigma_max=10.0)}


def make_gaussian(seed, mu_scale=0.3):
  rs = np.random.RandomState(seed)
  u, _ = np.linalg.qr(rs.randn(D, D))
  lam = np.linspace(0.3, 1.5, D)
  return {"mu": (mu_scale * rs.randn(D)).astype(np.float32),
          "u": u.astype(np.float32), "lam": lam.astype(np.float32)}


def gaussian_score_apply(sde):
  """score_apply(params, x, t) for the Gaussian data above."""

  def score_apply(p, x, t):
    mean, std = sde.marginal_prob(jnp.ones((x.shape[0], 1)), t)  # m_t (B,1), s_t (B,)
    c = mean ** 2 * p["lam"][None] + std[:, None] ** 2               # (B, D)
    e = (x - mean * p["mu"][None]) @ p["u"]
    return -(e / c) @ p["u"].T

  return score_apply


def _coeffs(sde, t):
  mean, std = sde.marginal_prob(jnp.ones((1, 1)), jnp.full((1,), t))
  return float(mean[0, 0]), float(std[0])


def closed_form(sde, p, x, noise=None, eps=1e-5):
  """(bpd, z) the exact ODE solve gives (float64); with `noise`, Hutchinson's bpd."""
  mu, u, lam = (np.asarray(p[k], np.float64) for k in ("mu", "u", "lam"))
  x = np.asarray(x, np.float64)
  m0, s0 = _coeffs(sde, eps)
  m1, s1 = _coeffs(sde, sde.T)
  c0, c1 = m0 ** 2 * lam + s0 ** 2, m1 ** 2 * lam + s1 ** 2
  z = m1 * mu + ((x - m0 * mu) @ u) * np.sqrt(c1 / c0) @ u.T
  half_log = 0.5 * np.log(c1 / c0)
  if noise is None:
    delta = np.full(x.shape[0], half_log.sum())
  else:
    vu = np.asarray(noise, np.float64) @ u
    delta = np.sum(vu ** 2 * half_log, axis=-1)              # v^T M v
  prior = np.asarray(sde.prior_logp(jnp.asarray(z, jnp.float32)), np.float64)
  return -(prior + delta) / LN2 / D, z


def data_bpd(p, x):
  """-log2 N(x; mu, Sigma) / D: the NLL of the data distribution itself (t = 0)."""
  mu, u, lam = (np.asarray(p[k], np.float64) for k in ("mu", "u", "lam"))
  w = (np.asarray(x, np.float64) - mu) @ u
  logp = -0.5 * np.sum(w ** 2 / lam + np.log(2 * np.pi * lam), axis=-1)
  return -logp / LN2 / D


def sample(p, seed, n=BATCH):
  rs = np.random.RandomState(seed)
  w = rs.randn(n, D) * np.sqrt(np.asarray(p["lam"]))
  return (np.asarray(p["mu"]) + w @ np.asarray(p["u"]).T).astype(np.float32)


_FNS = {}


def nll_fn(sde_name, hutchinson, step_size="shared", error_norm="rms"):
  """One jitted nll_fn per configuration, shared by the tests (compiles once)."""
  key = (sde_name, hutchinson, step_size, error_norm)
  if key not in _FNS:
    sde = SDES[sde_name]
    _FNS[key] = jax.jit(lk.get_likelihood_fn(
        sde, gaussian_score_apply(sde), hutchinson=hutchinson, step_size=step_size,
        error_norm=error_norm))
  return _FNS[key]


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_exact_divergence_matches_closed_form(sde_name):
  sde, p = SDES[sde_name], make_gaussian(0)
  x = sample(p, 1)
  bpd, z, nfe = nll_fn(sde_name, "exact")(p, x, jax.random.PRNGKey(0))
  want, z_want = closed_form(sde, p, x)
  np.testing.assert_allclose(np.asarray(z), z_want, rtol=1e-3, atol=1e-3)
  # The target is 0.01 bits/dim; the solve at rtol=atol=1e-5 gets ~1e-4.
  np.testing.assert_allclose(np.asarray(bpd), want, atol=2e-3)
  assert int(nfe) > 0 and np.all(np.isfinite(np.asarray(bpd)))


def test_vp_nll_matches_data_nll():
  # Against the data density itself: besides eps (s_eps^2 ~ 1e-6) the only gap
  # is the prior standing in for p_T = N(m_T mu, C_T), m_T = 6.6e-3; with
  # |mu| ~ 0.3 that costs < ~0.003 bits/dim, well inside 0.01.
  p = make_gaussian(2)
  x = sample(p, 3)
  bpd, _, _ = nll_fn("vp", "exact")(p, x, jax.random.PRNGKey(0))
  np.testing.assert_allclose(np.asarray(bpd), data_bpd(p, x), atol=0.01)


@pytest.mark.parametrize("sde_name,hutchinson,step_size,error_norm", [
    ("vp", "rademacher", "shared", "rms"), ("ve", "rademacher", "shared", "rms"),
    ("vp", "gaussian", "shared", "per_example"), ("ve", "rademacher", "per_example", "rms")])
def test_hutchinson_matches_its_fixed_probe_closed_form(sde_name, hutchinson, step_size,
                                                        error_norm):
  # Sigma is not diagonal, so v^T M v != tr M: a probe redrawn per evaluation, a
  # wrong noise distribution or a wrong jvp would all miss v^T M v.
  sde, p = SDES[sde_name], make_gaussian(4)
  x = sample(p, 5)
  rng = jax.random.PRNGKey(7)
  bpd, _, _ = nll_fn(sde_name, hutchinson, step_size, error_norm)(p, x, rng)
  noise = lk.hutchinson_noise(rng, x.shape, hutchinson)
  want, _ = closed_form(sde, p, x, noise)
  exact, _ = closed_form(sde, p, x)
  np.testing.assert_allclose(np.asarray(bpd), want, atol=2e-3)
  assert np.max(np.abs(want - exact)) > 0.01  # the probe matters here


def test_rademacher_average_over_draws_is_unbiased():
  # 16 copies of one point each get their own probe.  Var(v^T M v) =
  # 2 sum_{i != j} M_ij^2 for Rademacher v, so the mean of K draws is within
  # 4 standard errors of tr M (plus the 2e-3 solver allowance) w.p. > 0.9999.
  sde, p = SDES["vp"], make_gaussian(6)
  k = 16
  x = np.repeat(sample(p, 8, n=1), k, axis=0)
  bpd, _, _ = nll_fn("vp", "rademacher")(p, x, jax.random.PRNGKey(9))
  exact, _ = closed_form(sde, p, x[:1])
  u, lam = np.asarray(p["u"], np.float64), np.asarray(p["lam"], np.float64)
  (m0, s0), (m1, s1) = _coeffs(sde, 1e-5), _coeffs(sde, sde.T)
  m = u @ np.diag(0.5 * np.log((m1 ** 2 * lam + s1 ** 2) / (m0 ** 2 * lam + s0 ** 2))) @ u.T
  sd = np.sqrt(2 * (np.sum(m ** 2) - np.sum(np.diag(m) ** 2))) / LN2 / D
  assert np.std(np.asarray(bpd)) > 0.1 * sd  # the draws do differ
  assert abs(np.mean(np.asarray(bpd)) - exact[0]) < 4 * sd / np.sqrt(k) + 2e-3


def test_scipy_reference_agrees_with_diffrax():
  # A nonlinear score (tiny tanh MLP), so the two solvers' step sequences matter.
  sde = SDES["ve"]
  rs = np.random.RandomState(0)
  params = {"w1": rs.randn(D + 1, 16).astype(np.float32) / 3,
            "w2": rs.randn(16, D).astype(np.float32) / 4}

  def score_apply(p, x, t):
    h = jnp.tanh(jnp.concatenate([x / 5.0, t[:, None]], axis=1) @ p["w1"])
    return h @ p["w2"] - x / (1.0 + sde.sigma(t)[:, None] ** 2)

  x = rs.randn(3, D).astype(np.float32)
  rng = jax.random.PRNGKey(3)
  fn = jax.jit(lk.get_likelihood_fn(sde, score_apply, offset=lk.bpd_offset(True, True)))
  bpd, z, nfe = fn(params, x, rng)
  bpd_ref, z_ref, nfe_ref = lk.nll_scipy(sde, score_apply, params, x, rng,
                                         offset=lk.bpd_offset(True, True))
  np.testing.assert_allclose(np.asarray(bpd), bpd_ref, atol=1e-3)
  np.testing.assert_allclose(np.asarray(z), z_ref, rtol=1e-3, atol=1e-2)
  assert nfe_ref > 0 and int(nfe) > 0


def test_no_recompile_and_nfe_counts_evaluations():
  traces, calls = [0], [0]
  sde = SDES["vp"]
  base = gaussian_score_apply(sde)

  def score_apply(p, x, t):
    traces[0] += 1
    jax.debug.callback(lambda: calls.__setitem__(0, calls[0] + 1))
    return base(p, x, t)

  fn = jax.jit(lk.get_likelihood_fn(sde, score_apply))
  _, _, nfe = fn(make_gaussian(0), sample(make_gaussian(0), 0), jax.random.PRNGKey(0))
  jax.block_until_ready(nfe)
  first = traces[0]
  assert first > 0 and calls[0] == int(nfe)
  p2 = make_gaussian(1)
  bpd, _, _ = fn(p2, sample(p2, 1), jax.random.PRNGKey(1))
  jax.block_until_ready(bpd)
  assert traces[0] == first


def test_bpd_offset_hand_values():
  assert lk.bpd_offset(centered=False, dequantized=True) == 8.0
  assert lk.bpd_offset(centered=True, dequantized=True) == 7.0
  assert lk.bpd_offset(centered=False, dequantized=False) == 0.0
  assert lk.bpd_offset(centered=True, dequantized=False) == -1.0
  # Uniform density on [0,1]^D is 0 bits/dim in [0,1] coordinates and
  # -log2(1/2) = 1 bit/dim in [-1,1]; both are 8 bits for 256 equiprobable levels.
  assert 0.0 + lk.bpd_offset(False, True) == 8.0
  assert 1.0 + lk.bpd_offset(True, True) == 8.0
  # Continuous data: N(0.5, 0.1^2) on u is N(0, 0.2^2) on y = 2u - 1; the
  # offsets put both NLLs on the u scale.
  u = np.array([0.3, 0.55, 0.9])
  nll_u = -np.mean(-0.5 * ((u - 0.5) / 0.1) ** 2 - np.log(np.sqrt(2 * np.pi) * 0.1)) / LN2
  y = 2 * u - 1
  nll_y = -np.mean(-0.5 * (y / 0.2) ** 2 - np.log(np.sqrt(2 * np.pi) * 0.2)) / LN2
  np.testing.assert_allclose(nll_y + lk.bpd_offset(True, False),
                             nll_u + lk.bpd_offset(False, False), rtol=1e-12)


def test_dequantize():
  levels = np.arange(256, dtype=np.float32)
  img = jnp.asarray(np.tile(levels / 255.0, (64, 1)))
  out = np.asarray(lk.dequantize(jax.random.PRNGKey(0), img))
  assert np.all(np.floor(out * 256).astype(int) == np.tile(np.arange(256), (64, 1)))
  # (U + 255 img) / 256 has mean (0.5 + k) / 256 for level k.
  np.testing.assert_allclose(out.mean(axis=0), (levels + 0.5) / 256, atol=0.2 / 256)


def test_hutchinson_noise_distributions():
  rng = jax.random.PRNGKey(0)
  rad = np.asarray(lk.hutchinson_noise(rng, (64, 32), "rademacher"))
  assert set(np.unique(rad)) == {-1.0, 1.0}
  gauss = np.asarray(lk.hutchinson_noise(rng, (64, 32), "gaussian"))
  assert abs(gauss.mean()) < 0.1 and abs(gauss.var() - 1.0) < 0.1
  assert len(np.unique(np.abs(gauss))) > 1000
  assert lk.hutchinson_noise(rng, (64, 32), "exact") is None
  # The same rng gives the same probes (what ties nll_scipy to the jitted version).
  np.testing.assert_array_equal(rad, lk.hutchinson_noise(rng, (64, 32), "rademacher"))


def test_bad_names_raise_user_error():
  sde = SDES["vp"]
  with pytest.raises(UserError):
    lk.get_likelihood_fn(sde, gaussian_score_apply(sde), hutchinson="skilling")
  with pytest.raises(UserError):
    lk.get_likelihood_fn(sde, gaussian_score_apply(sde), step_size="adaptive")
  with pytest.raises(UserError):
    lk.get_likelihood_fn(sde, gaussian_score_apply(sde), error_norm="max")
  with pytest.raises(UserError):
    lk.get_likelihood_fn(sde, gaussian_score_apply(sde), solver="rk4")
