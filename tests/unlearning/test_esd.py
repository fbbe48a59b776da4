"""esd: the guidance-shifted frozen target (CORE App. C Eq. 8) and the partial-DDIM x_t."""
import jax
import jax.numpy as jnp
import numpy as np

from unlearn_jax import sampling, training
from unlearn_jax import sde as sde_lib
from unlearn_jax.unlearning import esd
from method_fixtures import DENOISE, FROZEN, K, KEYS, LABELS, PARAMS, PROCESS, X, X_T, eps_np, loss_of, make_spec


def test_esd_target_is_guidance_shifted_frozen_prediction():
  objective = training.Objective("forget", DENOISE, target=esd.esd_target(eta=0.7, base_label=K))
  got = loss_of(objective, consts={"frozen": FROZEN})
  e_f, e_0 = eps_np(FROZEN, X_T, LABELS), eps_np(FROZEN, X_T, np.full(3, K))
  target = e_0 - 0.7 * (e_f - e_0)
  np.testing.assert_allclose(got, np.mean((eps_np(PARAMS, X_T, LABELS) - target) ** 2), rtol=1e-5)
  base = training.Objective("forget", DENOISE, target=esd.esd_target(eta=1.0, base_label=0))
  target = 2 * eps_np(FROZEN, X_T, np.zeros(3, np.int32)) - e_f
  np.testing.assert_allclose(loss_of(base, consts={"frozen": FROZEN}),
                             np.mean((eps_np(PARAMS, X_T, LABELS) - target) ** 2), rtol=1e-5)


def test_ddim_run_steps_stops_each_example():
  sched = sde_lib.DDPMSchedule(N=20)
  eps_fn = lambda x, i: 0.3 * x + 0.01 * i[:, None, None, None]
  x_T = jax.random.normal(jax.random.key(0), (3, 2, 2, 1))
  full = sampling.ddim_sample(jax.random.key(1), sched, eps_fn, x_T.shape, n_steps=5, x_init=x_T)
  part = sampling.ddim_sample(jax.random.key(1), sched, eps_fn, x_T.shape, n_steps=5, x_init=x_T,
                              run_steps=jnp.array([0, 5, 2]))
  np.testing.assert_allclose(part[0], x_T[0])
  np.testing.assert_allclose(part[1], full[1], rtol=1e-6)
  seq = sampling.ddim_timesteps(20, 5)          # two steps from seq[0] == one 3-step DDIM on seq[:3]
  abar = sched.alphas_cumprod
  x = np.asarray(x_T[2])
  for a, b in ((seq[0], seq[1]), (seq[1], seq[2])):
    e = 0.3 * x + 0.01 * a
    x0 = (x - np.sqrt(1 - abar[a]) * e) / np.sqrt(abar[a])
    x = np.sqrt(abar[b]) * x0 + np.sqrt(1 - abar[b]) * e
  np.testing.assert_allclose(part[2], x, rtol=1e-5, atol=1e-6)


def test_esd_noiser_builds_x_t_by_partial_ddim_from_noise():
  noiser = esd.partial_ddim_noiser(n_steps=4, guidance=0.0, source="frozen")
  spec = make_spec()
  x0 = jnp.asarray(X)
  n = noiser(training.NoiserInputs(x0, KEYS, jnp.asarray(LABELS), PARAMS, {"frozen": FROZEN}, spec))
  seq = sampling.ddim_timesteps(PROCESS.N, 4)
  assert set(np.asarray(n.t).tolist()) <= set(seq.tolist())
  assert n.x_t.shape == X.shape and np.all(np.asarray(n.weight) == 1.0)
  np.testing.assert_allclose(n.std, np.asarray(PROCESS.marginal_coeffs(n.t)[1]), rtol=1e-6)
  # it does not depend on the data
  n2 = noiser(training.NoiserInputs(x0 + 5.0, KEYS, jnp.asarray(LABELS), PARAMS, {"frozen": FROZEN}, spec))
  np.testing.assert_allclose(n.x_t, n2.x_t)
