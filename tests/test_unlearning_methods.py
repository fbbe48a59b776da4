"""Engine pieces the unlearning methods use, against hand-computed values (condition dropout).

Each method's own tests are in tests/unlearning/ (test_<module>.py, mirroring
unlearn_jax/unlearning/), with the table test over every method in test_all_methods.py.
(Classifier-free guidance, (1 + w) eps(x, c) - w eps(x, null), is checked with hand
values in test_sampling.py.)
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from unlearn_jax import losses, training
from unlearn_jax import sde as sde_lib

K = 4  # classes 0..3; label K is the null class
PROCESS = sde_lib.DDPMSchedule(N=10)
X = np.linspace(0.0, 1.0, 3 * 2 * 2).reshape(3, 2, 2, 1).astype(np.float32)
LABELS = np.array([1, 2, 1], np.int32)
PARAMS = {"w": jnp.array([0.5, 1.5, -0.7, 2.0, 0.3]), "b": jnp.array([0.1, -0.4, 0.8, 0.2, -1.0])}
DENOISE = functools.partial(losses.denoising_loss, reduce="mean")


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


KEYS = training.example_keys(jax.random.key(1), 3, None)
DROPOUT = jax.random.key(2)
BATCH = {"x": X, "labels": LABELS}


def test_cond_drop_one_uses_the_null_label_and_zero_keeps_labels():
  def loss(labels, cond_drop):
    objective = training.Objective("retain", DENOISE, cond_drop=cond_drop)
    return training.objective_loss(PARAMS, {"x": X, "labels": labels}, KEYS, DROPOUT,
                                   make_spec(retain=objective), objective)

  null = np.full_like(LABELS, K)
  np.testing.assert_allclose(loss(LABELS, 1.0), loss(null, 0.0), rtol=1e-6)
  n = noised(KEYS)
  for labels in (LABELS, null):
    hand = np.mean((np.asarray(n.noise) - eps_np(PARAMS, n.x_t, labels)) ** 2)
    np.testing.assert_allclose(loss(labels, 0.0), hand, rtol=1e-5)
  assert abs(float(loss(LABELS, 0.0)) - float(loss(null, 0.0))) > 1e-3
