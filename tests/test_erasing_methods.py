"""Training-engine pieces the erasing methods rely on: the optimizer's name check and
trainable subsets (SD's cross-attention), against hand-computed values.

Each method's own tests are in tests/unlearning/ (test_<module>.py, mirroring
unlearn_jax/unlearning/), with the table test over every method in test_all_methods.py.
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from unlearn_jax import config_lib, losses, training
from unlearn_jax import sde as sde_lib
from unlearn_jax import train_state as ts
from unlearn_jax.errors import UserError


def test_optimizer_name_is_validated_with_the_field_name():
  with pytest.raises(UserError) as e:
    training.make_optimizer(1e-3, name="sgdd")
  assert str(e.value) == "config.optim.name='sgdd' is not valid: expected one of adam, sgd"
  assert config_lib.base().optim.name == "adam"


# ----------------------------------------------------------------------------- a tiny class-conditional model

K = 4  # classes 0..3; label K is the null class
PROCESS = sde_lib.DDPMSchedule(N=10)
X = np.linspace(0.0, 1.0, 3 * 2 * 2).reshape(3, 2, 2, 1).astype(np.float32)
LABELS = np.array([1, 2, 1], np.int32)
PARAMS = {"w": jnp.array([0.5, 1.5, -0.7, 2.0, 0.3]), "b": jnp.array([0.1, -0.4, 0.8, 0.2, -1.0])}
DENOISE = functools.partial(losses.denoising_loss, reduce="mean")
BATCH = {"x": X, "labels": LABELS}


def apply_fn(variables, x, time, labels, train=False, rngs=None):
  del time, train, rngs
  p = variables["params"]
  return x * p["w"][labels][:, None, None, None] + p["b"][labels][:, None, None, None]


def make_spec(**objectives):
  return training.StepSpec(apply_fn=apply_fn, process=PROCESS, output_type="eps", objectives=objectives,
                           weighting="simple", conditional=True, null_label=K)


# ----------------------------------------------------------------------------- trainable subsets (SD's cross-attention)
TRAIN_W = {"w": True, "b": False}


def _one_step(objectives, tx, trainable, params=PARAMS):
  spec = dataclasses.replace(make_spec(**objectives), trainable=trainable)
  state = ts.create(params, tx)
  batches = {o.stream: BATCH for o in objectives.values()}
  new, _ = training.train_step(state, batches, jax.random.key(0), {}, spec=spec, tx=tx)
  return new


def test_trainable_subset_gets_the_full_gradient_and_frozen_leaves_stay():
  objective = training.Objective("forget", DENOISE)
  full = _one_step({"forget": objective}, optax.sgd(0.1), None)
  sub = _one_step({"forget": objective}, optax.sgd(0.1), TRAIN_W)
  np.testing.assert_allclose(sub.params["w"], full.params["w"], rtol=1e-6)   # same gradient on w
  np.testing.assert_array_equal(sub.params["b"], PARAMS["b"])                  # b frozen
  assert not np.allclose(full.params["b"], PARAMS["b"])


def test_optimizer_keeps_adam_moments_for_the_trainable_leaves_only():
  objective = training.Objective("forget", DENOISE)
  masked = _one_step({"forget": objective}, training.make_optimizer(0.1, grad_clip=0.0, trainable=TRAIN_W),
                     TRAIN_W)
  full = _one_step({"forget": objective}, training.make_optimizer(0.1, grad_clip=0.0), TRAIN_W)
  np.testing.assert_allclose(masked.params["w"], full.params["w"], rtol=1e-6)
  np.testing.assert_array_equal(masked.params["b"], PARAMS["b"])
  moments = lambda s: sum(np.size(x) == 5 for x in jax.tree_util.tree_leaves(s.opt_state))
  assert moments(full) == 4 and moments(masked) == 2       # mu and nu of w only
