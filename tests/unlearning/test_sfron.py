"""sfron: weighted ascent, the alpha schedule, the alternating transform and train step."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from unlearn_jax import training
from unlearn_jax import train_state as ts
from unlearn_jax.unlearning import methods, sfron
from unlearn_jax import settings
from method_fixtures import BATCH, DENOISE, MASK, PARAMS, U, X, close, combo, make_spec, method_config


def test_weighted_ascent_hand_value_and_gradient():
  per = jnp.array([1.0, 4.0])
  # w ∝ l^-1/2 = [1, 0.5] / 1.5 ; -(1 * 1 + 0.5 * 4) / 1.5 = -2
  np.testing.assert_allclose(sfron.weighted_ascent(per), -2.0, rtol=1e-6)
  np.testing.assert_allclose(jax.grad(sfron.weighted_ascent)(per), [-1.0 / 1.5, -0.5 / 1.5], rtol=1e-6)


def test_alpha_schedule():
  np.testing.assert_allclose(sfron.alpha_schedule(0, 4, 10.0), 10.0, rtol=1e-6)
  np.testing.assert_allclose(sfron.alpha_schedule(2, 4, 10.0), 5.0, rtol=1e-6)
  np.testing.assert_allclose(sfron.alpha_schedule(4, 4, 10.0), 0.0, atol=1e-5)
  np.testing.assert_allclose(sfron.alpha_schedule(1, 4, 10.0), 5.0 * (1 + np.cos(np.pi / 4)), rtol=1e-6)


def test_sfron_transform_scales_masks_and_counts_iterations():
  tx = sfron.sfron(iterations=4, alpha_max=10.0)
  state = tx.init(U)
  out, state = tx.update(U, state, phase=jnp.int32(0), mask=MASK)
  close(out, combo(lambda u, m: 10.0 * u * m, U, MASK))
  out, state = tx.update(U, state, phase=jnp.int32(1), mask=MASK)
  close(out, U)
  out, state = tx.update(U, state, phase=jnp.int32(0), mask=MASK)  # iteration k = count // 2 = 1
  close(out, combo(lambda u, m: 5.0 * (1 + np.cos(np.pi / 4)) * u * m, U, MASK))
  out, _ = sfron.sfron(4).update(U, sfron.sfron(4).init(U), phase=0)
  close(out, combo(lambda u: 10.0 * u, U))


def test_train_step_alternates_objectives():
  objectives = {"forget": training.Objective("forget", DENOISE, reduce=sfron.weighted_ascent),
                "retain": training.Objective("retain", DENOISE)}
  spec = make_spec(alternate=True, **objectives)
  tx = optax.chain(sfron.sfron(4, 10.0), optax.sgd(1.0))
  mask = {"w": jnp.array([1.0, 0.0, 1.0, 1.0, 1.0]), "b": jnp.array([1.0, 1.0, 0.0, 1.0, 1.0])}
  consts = {"mask": mask}
  batches = {"forget": BATCH, "retain": {"x": X[::-1] * 0.5, "labels": np.array([0, 3, 0], np.int32)}}
  rng = jax.random.key(3)
  step = functools.partial(training.train_step, spec=spec, tx=tx)

  def direct_grad(params, s, i, name):
    step_rng = jax.random.fold_in(rng, s)
    keys = training.example_keys(jax.random.fold_in(step_rng, i), 3)
    return jax.value_and_grad(training.objective_loss)(
        params, batches[objectives[name].stream], keys, jax.random.fold_in(step_rng, i), spec,
        objectives[name], consts)

  state = ts.create(PARAMS, tx)
  state1, m1 = step(state, batches, rng, consts)
  loss0, g0 = direct_grad(PARAMS, 0, 0, "forget")
  close(state1.params, combo(lambda p, g, m: p - 10.0 * g * m, PARAMS, g0, mask))
  np.testing.assert_allclose(m1["loss/active"], loss0, rtol=1e-6)
  assert float(loss0) < 0  # the forget step ascends
  state2, m2 = step(state1, batches, rng, consts)
  loss1, g1 = direct_grad(state1.params, 1, 1, "retain")
  close(state2.params, combo(lambda p, g: p - g, state1.params, g1))
  np.testing.assert_allclose(m2["loss/active"], loss1, rtol=1e-6)
  assert int(state2.step) == 2


def test_build_sfron_transform_uses_alpha_max_and_half_the_steps():
  _, tx, _ = methods.build("sfron", "", settings.of(method_config()), alt=None, steps=8)  # K = 4 iterations
  state = tx.init(U)
  out, state = tx.update(U, state, phase=0, mask=MASK)
  close(out, combo(lambda u, m: 6.0 * u * m, U, MASK))
  _, state = tx.update(U, state, phase=1, mask=MASK)
  _, state = tx.update(U, state, phase=0, mask=MASK)
  _, state = tx.update(U, state, phase=1, mask=MASK)
  out, _ = tx.update(U, state, phase=0, mask=MASK)  # k = 2 = K / 2
  close(out, combo(lambda u, m: 3.0 * u * m, U, MASK))
