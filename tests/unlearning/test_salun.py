"""salun: the masked combination (DiMUM paper Eq. 6) and the random-label target, by hand."""
import jax
import jax.numpy as jnp
import numpy as np

from unlearn_jax import training
from unlearn_jax.unlearning import core, dimum, salun
from method_fixtures import (BATCH, DENOISE, DROPOUT, F, K, KEYS, LABELS, MASK, PARAMS, U, apply_fn, close, combo,
                             eps_np, make_spec, noised, update)


def test_salun_is_masked_forget_plus_beta_retain():
  close(update(salun.salun(0.1), F, retain_grads=U, mask=MASK),
        combo(lambda f, r, m: (f + 0.1 * r) * m, F, U, MASK))
  close(update(salun.salun(0.1), F, retain_grads=U), combo(lambda f, r: f + 0.1 * r, F, U))


def test_salun_random_label_target_loss_hand_value():
  alt = dimum.alternative_classes(K, (1, 2), "next")  # alt[1] = alt[2] = 3
  objective = training.Objective("forget", DENOISE, target=salun.random_label_target(alt))
  loss = training.objective_loss(PARAMS, BATCH, KEYS, DROPOUT, make_spec(forget=objective), objective)
  x_t = noised(KEYS).x_t
  diff = eps_np(PARAMS, x_t, LABELS) - eps_np(PARAMS, x_t, alt[LABELS])
  np.testing.assert_allclose(loss, np.mean(diff ** 2), rtol=1e-5)
  assert float(loss) > 0.1


def test_salun_target_is_stop_gradient():
  alt = dimum.alternative_classes(K, (1, 2), "next")
  objective = training.Objective("forget", DENOISE, target=salun.random_label_target(alt))
  spec = make_spec(forget=objective)
  grads = jax.grad(training.objective_loss)(PARAMS, BATCH, KEYS, DROPOUT, spec, objective)
  x_t = noised(KEYS).x_t
  fixed = jax.tree_util.tree_map(np.asarray, PARAMS)

  def hand(p, target_params):
    return jnp.mean((apply_fn({"params": p}, x_t, None, LABELS)
                     - apply_fn({"params": target_params}, x_t, None, alt[LABELS])) ** 2)

  close(grads, jax.grad(hand)(PARAMS, fixed))
  assert float(grads["w"][3]) == 0.0 and float(grads["b"][3]) == 0.0  # alt class only in the target
  naive = jax.grad(lambda p: hand(p, p))(PARAMS)
  assert abs(float(naive["b"][3])) > 1e-3  # without stop-gradient it would be moved


def test_salun_target_draws_c_prime_per_example_from_a_candidate_table():
  """`unlearn.anchors` set: c' drawn per example from row c of the (C, K) table (CORE App. C's
  per-step random alternative), with the same keys as `core.draw_anchor`."""
  table = np.array([[0, 0], [0, 3], [3, 0], [3, 3], [4, 4]], np.int32)
  objective = training.Objective("forget", DENOISE, target=salun.random_label_target(table))
  spec = make_spec(forget=objective)
  x_t = noised(KEYS).x_t
  drawn = np.asarray(core.draw_anchor(table, jnp.asarray(LABELS), KEYS))
  assert all(d in table[c] for d, c in zip(drawn, LABELS))
  loss = training.objective_loss(PARAMS, BATCH, KEYS, DROPOUT, spec, objective)
  diff = eps_np(PARAMS, x_t, LABELS) - eps_np(PARAMS, x_t, drawn)
  np.testing.assert_allclose(loss, np.mean(diff ** 2), rtol=1e-5)
  # over many keys both candidates of a forget row are drawn
  many = training.example_keys(jax.random.key(7), 64)
  seen = set(np.asarray(core.draw_anchor(table, jnp.full((64,), 1, jnp.int32), many)).tolist())
  assert seen == {0, 3}
