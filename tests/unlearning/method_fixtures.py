"""What the tests of tests/unlearning share: gradient trees with hand-checkable values, a tiny
class-conditional linear "model" eps_theta(x, c) = x w[c] + b[c] with numpy twins, and the
configs the method tests build from."""
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from unlearn_jax import config_lib, losses, training
from unlearn_jax import sde as sde_lib

# ----------------------------------------------------------------------------- gradient trees

U = {"a": jnp.array([1.0, -2.0]), "b": {"c": jnp.array([[0.5, 3.0], [-1.0, 4.0]])}}
F = {"a": jnp.array([2.0, 1.0]), "b": {"c": jnp.array([[1.0, -1.0], [0.0, 2.0]])}}
M = {"a": jnp.array([-1.0, 0.5]), "b": {"c": jnp.array([[2.0, 0.0], [1.0, -3.0]])}}
MASK = {"a": jnp.array([1.0, 0.0]), "b": {"c": jnp.array([[0.0, 1.0], [1.0, 0.0]])}}
R, G = U, F        # the names tests/test_erasing_methods.py used for the same trees


def close(tree, expected, rtol=1e-5, atol=1e-6, **kw):
  for a, b in zip(jax.tree_util.tree_leaves(tree), jax.tree_util.tree_leaves(expected), strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol, **kw)


def combo(fn, *trees):
  return jax.tree_util.tree_map(fn, *trees)


def update(tx, updates, **extra):
  out, _ = tx.update(updates, tx.init(updates), None, **extra)
  return out


def flat(tree):
  return np.concatenate([np.ravel(np.asarray(l)) for l in jax.tree_util.tree_leaves(tree)])


# ----------------------------------------------------------------------------- a tiny class-conditional model

K = 4  # classes 0..3; label K is the null class
PROCESS = sde_lib.DDPMSchedule(N=10)
X = np.linspace(0.0, 1.0, 3 * 2 * 2).reshape(3, 2, 2, 1).astype(np.float32)
LABELS = np.array([1, 2, 1], np.int32)
PARAMS = {"w": jnp.array([0.5, 1.5, -0.7, 2.0, 0.3]), "b": jnp.array([0.1, -0.4, 0.8, 0.2, -1.0])}
FROZEN = {"w": jnp.array([1.0, -0.5, 0.4, 0.9, 1.2]), "b": jnp.array([0.3, 0.2, -0.6, 0.7, 0.05])}
DENOISE = functools.partial(losses.denoising_loss, reduce="mean")
KEYS = training.example_keys(jax.random.key(1), 3)
DROPOUT = jax.random.key(2)
BATCH = {"x": X, "labels": LABELS}


def apply_fn(variables, x, time, labels, train=False, rngs=None):
  del time, train, rngs
  p = variables["params"]
  return x * p["w"][labels][:, None, None, None] + p["b"][labels][:, None, None, None]


def make_spec(alternate=False, **objectives):
  return training.StepSpec(apply_fn=apply_fn, process=PROCESS, output_type="eps", objectives=objectives,
                           weighting="simple", conditional=True, null_label=K, alternate=alternate)


def noised(keys, x=X):
  return training.perturb_examples(PROCESS, jnp.asarray(x), keys, "simple")


def eps_np(params, x_t, labels):
  w, b = np.asarray(params["w"]), np.asarray(params["b"])
  return np.asarray(x_t) * w[labels][:, None, None, None] + b[labels][:, None, None, None]


def loss_of(objective, params=PARAMS, consts=None, batch=BATCH):
  return training.objective_loss(params, batch, KEYS, DROPOUT, make_spec(forget=objective), objective,
                                 consts)


X_T = training.perturb_examples(PROCESS, jnp.asarray(X), KEYS, "simple").x_t


def tiny_model_grads(params, inputs):
  """numpy gradient of mean_n weight_n mean_d (x_t w[c_n] + b[c_n] - target)^2 (the tiny model)."""
  noised, labels, target, weight = inputs
  labels = np.asarray(labels)
  w, b = (np.asarray(params[k], np.float64) for k in ("w", "b"))
  x = np.asarray(noised.x_t, np.float64).reshape(len(labels), -1)
  r = x * w[labels][:, None] + b[labels][:, None] - np.asarray(target, np.float64).reshape(x.shape)
  coef = 2.0 * np.asarray(weight, np.float64)[:, None] / r.size
  gw, gb = np.zeros_like(w), np.zeros_like(b)
  np.add.at(gw, labels, np.sum(coef * r * x, 1))
  np.add.at(gb, labels, np.sum(coef * r, 1))
  return {"w": gw, "b": gb}


# ----------------------------------------------------------------------------- configs


def method_config():
  """config_lib.base() with a mean reduction and coefficients that are not their defaults."""
  c = config_lib.base()
  c.training.reduce = "mean"
  c.sgu.update(dict(alpha=0.5, std_power=0.0))
  c.ga = ml_collections.ConfigDict(dict(beta=0.5))
  c.dimum = ml_collections.ConfigDict(dict(beta=2.0))
  c.salun = ml_collections.ConfigDict(dict(beta=0.1, fraction=0.5))
  c.sfron = ml_collections.ConfigDict(dict(alpha_max=6.0))
  c.ca.prior_weight = 0.5
  c.core.alpha = 2.0
  c.sa.update(dict(gamma=0.5, lam=3.0))
  c.shs.gamma = 0.2
  c.erasediff.update(dict(eta=0.8, rule="paper", inner_steps=1, inner_lr=0.1))
  return c


def anchor_cfg(**kw):
  """config_lib.ddpm_base() with `section__key=value` overrides."""
  cfg = config_lib.ddpm_base()
  for k, v in kw.items():
    section, key = k.split("__")
    cfg[section][key] = v
  return cfg
