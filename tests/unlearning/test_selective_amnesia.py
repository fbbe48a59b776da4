"""selective_amnesia: the EWC penalty, the surrogate images and the Fisher, by hand."""
import jax
import jax.numpy as jnp
import numpy as np

from unlearn_jax import training
from unlearn_jax.unlearning import selective_amnesia
from method_fixtures import (DENOISE, G, K, KEYS, LABELS, PARAMS, PROCESS, R, X, apply_fn, close, make_spec,
                             tiny_model_grads)


def test_fisher_penalty_hand_value():
  fisher = {"a": jnp.array([0.5, 2.0]), "b": {"c": jnp.array([[1.0, 0.0], [3.0, 1.0]])}}
  frozen = jax.tree_util.tree_map(lambda x: x * 0.5, G)
  tx = selective_amnesia.fisher_penalty(10.0)
  out, _ = tx.update(R, tx.init(R), G, fisher=fisher, frozen=frozen)
  close(out, jax.tree_util.tree_map(lambda u, f, p, p0: u + 20.0 * f * (p - p0), R, fisher, G, frozen))
  np.testing.assert_allclose(out["a"], [1.0 + 20 * 0.5 * 1.0, -2.0 + 20 * 2.0 * 0.5])
  # it is the gradient of lam sum F (theta - theta*)^2
  pen = lambda p: 10.0 * sum(jnp.sum(f * (x - x0) ** 2) for f, x, x0 in zip(
      jax.tree_util.tree_leaves(fisher), jax.tree_util.tree_leaves(p), jax.tree_util.tree_leaves(frozen)))
  close(jax.tree_util.tree_map(jnp.subtract, out, R), jax.grad(pen)(G))


def test_selective_amnesia_combination():
  fisher = jax.tree_util.tree_map(jnp.ones_like, R)
  tx = selective_amnesia.selective_amnesia(gamma=0.5, lam=1.0)
  out, _ = tx.update(R, tx.init(R), G, replay_grads=G, fisher=fisher, frozen=G)
  close(out, jax.tree_util.tree_map(lambda a, b: a + 0.5 * b, R, G))   # at theta = theta*: no penalty


def test_uniform_surrogate_replaces_the_images():
  spec = training.StepSpec(apply_fn=apply_fn, process=PROCESS, output_type="eps", objectives={},
                           weighting="simple", conditional=True, null_label=K, centered=True)
  n = selective_amnesia.uniform_surrogate_noiser(
      training.NoiserInputs(jnp.asarray(X), KEYS, None, PARAMS, {}, spec))
  n2 = selective_amnesia.uniform_surrogate_noiser(
      training.NoiserInputs(jnp.asarray(X) + 3.0, KEYS, None, PARAMS, {}, spec))
  np.testing.assert_allclose(n.x_t, n2.x_t)                     # independent of the data
  mean, std = PROCESS.marginal_coeffs(n.t)
  x0 = (np.asarray(n.x_t) - np.asarray(std)[:, None, None, None] * np.asarray(n.noise)) \
      / np.asarray(mean)[:, None, None, None]
  assert x0.min() >= -1.0 - 1e-4 and x0.max() <= 1.0 + 1e-4 and x0.min() < -0.2


def _u_stat(g):
  m = len(g)
  return (np.sum(g, 0) ** 2 - np.sum(g ** 2, 0)) / (m * (m - 1))


def test_diagonal_fisher_is_mean_of_unbiased_squared_per_example_gradients():
  # l(w; x, k) = w . (x + n_k): every draw's gradient is x + n_k, known in closed form.
  w = {"w": jnp.array([1.0, -2.0])}
  xs = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]], np.float32)
  noise = lambda k: jax.random.normal(k, (2,))
  per = lambda p, x, k: jnp.sum(p["w"] * (x + noise(k)))
  keys = jax.random.split(jax.random.key(3), 12).reshape(3, 4)
  f = selective_amnesia.diagonal_fisher(per, w, [(xs[:2], keys[:2]), (xs[2:], keys[2:])])
  draws = np.array([[x + np.asarray(noise(k)) for k in ks] for x, ks in zip(xs, keys)])    # (3, 4, 2)
  expected = np.maximum(np.mean([_u_stat(d) for d in draws], 0), 0.0)
  np.testing.assert_allclose(f["w"], expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(selective_amnesia.squared_mean_estimate(jnp.asarray(draws[0])), _u_stat(draws[0]),
                             rtol=1e-5)


def test_diagonal_fisher_is_unbiased_where_the_square_of_the_draw_mean_is_not():
  # Draws g = mu + sigma z (m = 4): E[F] = mu^2, while the square of the 4-draw mean (the old
  # estimate) is mu^2 + sigma^2 / 4 = mu^2 + 1.
  mu, sigma, n, m = np.array([1.0, 0.2]), 2.0, 2000, 4
  per = lambda p, x, k: jnp.sum(p["w"] * (jnp.asarray(mu) + sigma * jax.random.normal(k, (2,))))
  keys = jax.random.split(jax.random.key(5), n * m).reshape(n, m)
  f = selective_amnesia.diagonal_fisher(per, {"w": jnp.zeros(2)}, [(np.zeros((n, 1)), keys)])
  np.testing.assert_allclose(f["w"], mu ** 2, atol=0.25)
  assert np.all(np.asarray(f["w"]) < mu ** 2 + 0.75)


def test_sample_fisher_on_the_tiny_model_hand_values():
  # F = mean_n U(g_n1..g_nm), g_nj = N grad l(x_n, t_j, z_j) with (t_j, z_j) from
  # split(fold_in(key, n), m)[j]; the gradient of the tiny linear model by hand.
  objective = training.Objective("forget", DENOISE)
  spec = make_spec(forget=objective)
  key, m, scale = jax.random.key(9), 3, 10.0
  f = selective_amnesia.sample_fisher(PARAMS, jnp.asarray(X), jnp.asarray(LABELS), key, spec=spec,
                                      objective=objective, draws=m, chunk=2, scale=scale)
  per_sample, old = [], []
  for n in range(len(X)):
    g = []
    for k in jax.random.split(jax.random.fold_in(key, n), m):
      inputs = training.objective_inputs(PARAMS, {"x": X[n:n + 1], "labels": LABELS[n:n + 1]}, k[None], spec,
                                         objective)
      gr = tiny_model_grads(PARAMS, inputs)
      g.append(scale * np.concatenate([gr["b"], gr["w"]]))
    g = np.array(g)
    per_sample.append(_u_stat(g))
    old.append(np.mean(g, 0) ** 2)
  expected = np.maximum(np.mean(per_sample, 0), 0.0)
  np.testing.assert_allclose(np.concatenate([f["b"], f["w"]]), expected, rtol=1e-4, atol=1e-6)
  assert not np.allclose(expected, np.mean(old, 0), rtol=0.05)
  assert np.all(np.asarray(f["w"])[[0, 3, 4]] == 0.0)       # classes without samples (0, 3; the null 4)
