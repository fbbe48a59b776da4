"""erasediff: lambda_t and delta_t (Theorem 3.1), the value gap, and the config -> update path."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from unlearn_jax import config_lib, training
from unlearn_jax import train_state as ts
from unlearn_jax.errors import UserError
from unlearn_jax.unlearning import erasediff, methods
from unlearn_jax.stages import train as train_stage
from unlearn_jax import settings
from method_fixtures import (BATCH, DENOISE, DROPOUT, G, K, KEYS, LABELS, PARAMS, PROCESS, R, X, X_T, close, eps_np,
                             flat, loss_of, make_spec, method_config, tiny_model_grads)


r, g = flat(R), flat(G)          # r.g = 2 - 2 + 0.5 - 3 + 0 + 8 = 5.5, |g|^2 = 11, |r|^2 = 31.25


assert np.isclose(r @ g, 5.5) and np.isclose(g @ g, 11.0)


@pytest.mark.parametrize("rule,eta,expected_lambda", [
    ("paper", 0.1, 0.0),                         # max(0, (0.1 * 11 - 5.5) / 11) = max(0, -0.4)
    ("paper", 0.8, 0.3),                         # (0.8 * 11 - 5.5) / 11 = 0.3
    ("constant", 0.8, 0.25),                     # lam
    ("cosine", 0.8, 0.8 - 5.5 / np.sqrt(31.25 * 11.0)),
])
def test_erasediff_lambda_and_update_hand_values(rule, eta, expected_lambda):
  tx = erasediff.erasediff(eta=eta, rule=rule, lam=0.25)
  delta, state = tx.update(R, tx.init(R), None, forget_grads=G)
  np.testing.assert_allclose(state.log["lambda_t"], expected_lambda, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(flat(delta), r + expected_lambda * g, rtol=1e-5)
  d = r + expected_lambda * g
  np.testing.assert_allclose(state.log["cos_update_retain"], d @ r / np.linalg.norm(d) / np.linalg.norm(r),
                             rtol=1e-5)
  np.testing.assert_allclose(state.log["cos_update_forget"], d @ g / np.linalg.norm(d) / np.linalg.norm(g),
                             rtol=1e-5)


def test_erasediff_paper_rule_meets_the_constraint_of_eq6():
  # Theorem 3.1: delta solves min ||g_r - delta|| s.t. grad g . delta >= a_t = eta ||grad g||^2.
  for eta in (0.1, 0.5, 0.8, 2.0):
    delta, _ = erasediff.erasediff(eta=eta).update(R, None, None, forget_grads=G)
    assert flat(delta) @ g >= eta * (g @ g) - 1e-4
  rng = np.random.default_rng(0)
  best = r + max(0.0, (0.8 * 11 - 5.5) / 11) * g
  for _ in range(200):   # no feasible point is closer to g_r
    cand = best + rng.normal(size=r.shape) * 0.3
    if cand @ g >= 0.8 * 11:
      assert np.linalg.norm(cand - r) >= np.linalg.norm(best - r) - 1e-6


def test_erasediff_zero_forget_gradient_gives_lambda_zero():
  zero = jax.tree_util.tree_map(jnp.zeros_like, G)
  delta, state = erasediff.erasediff(eta=0.5).update(R, None, None, forget_grads=zero)
  assert float(state.log["lambda_t"]) == 0.0
  close(delta, R)


C = {"w": jnp.array([1.0, -1.0, 0.5])}


THETA = {"w": jnp.array([3.0, 0.0, -0.5])}


def quadratic(p):
  return 0.5 * jnp.sum((p["w"] - C["w"]) ** 2)


@pytest.mark.parametrize("grad_form", erasediff.GRAD_FORMS)
@pytest.mark.parametrize("k", [0, 1, 3])
def test_value_gap_closed_form_on_a_quadratic(grad_form, k):
  # grad = p - c, so phi^K - c = (1 - xi)^K (theta - c); g = 0.5 (1 - (1 - xi)^2K) ||theta - c||^2.
  xi = 0.3
  d = np.asarray(THETA["w"] - C["w"])
  value, grad = erasediff.value_gap(k, xi, grad_form)(quadratic, THETA)
  q = (1 - xi) ** k
  np.testing.assert_allclose(value, 0.5 * (1 - q ** 2) * d @ d, rtol=1e-5)
  # grad L_f(phi^K) = q d; phi^K's Jacobian is q I, so the unrolled gradient is (1 - q^2) d.
  expected = {"fixed": d, "first_order": (1 - q) * d, "unrolled": (1 - q ** 2) * d}[grad_form]
  np.testing.assert_allclose(grad["w"], expected, rtol=1e-5, atol=1e-7)


def test_value_gap_default_grad_form_makes_k_and_xi_matter():
  # The default (config_lib.base() and value_gap) is "first_order", in which grad g depends on K
  # and xi; "fixed" stays the same for every K (documented as an option).
  assert config_lib.base().erasediff.grad_form == erasediff.DEFAULT_GRAD_FORM == "first_order"
  grad = lambda *a: np.asarray(erasediff.value_gap(*a)(quadratic, THETA)[1]["w"])
  ks = [grad(k, 0.3) for k in (0, 2, 5)]
  assert np.allclose(ks[0], 0.0)                            # K = 0: phi^0 = theta, nothing to erase
  assert not np.allclose(ks[1], ks[2]) and not np.allclose(ks[1], 0.0)
  assert not np.allclose(grad(2, 0.1), grad(2, 0.3))
  fixed = [grad(k, xi, "fixed") for k, xi in ((0, 0.3), (2, 0.3), (5, 0.1))]
  np.testing.assert_array_equal(fixed[0], fixed[1])
  np.testing.assert_array_equal(fixed[0], fixed[2])


def test_inner_descent_is_k_gradient_steps():
  phi = erasediff.inner_descent(quadratic, THETA, 2, 0.25)
  p = np.asarray(THETA["w"])
  for _ in range(2):
    p = p - 0.25 * (p - np.asarray(C["w"]))
  np.testing.assert_allclose(phi["w"], p, rtol=1e-6)


def test_value_gap_rejects_bad_options():
  with pytest.raises(UserError):
    erasediff.value_gap(2, 0.1, "bogus")
  with pytest.raises(UserError):
    erasediff.erasediff(rule="bogus")


def test_erasediff_noise_target_is_uniform_per_example():
  inputs = training.TargetInputs(None, PARAMS, training.perturb_examples(PROCESS, jnp.asarray(X), KEYS, "simple"),
                                 jnp.asarray(LABELS), {}, KEYS)
  t = np.asarray(erasediff.uniform_target(inputs))
  assert t.shape == X.shape and t.min() >= 0.0 and t.max() < 1.0
  assert not np.allclose(t[0], t[1])
  np.testing.assert_array_equal(t, np.asarray(erasediff.uniform_target(inputs)))   # fixed by the keys
  objective = training.Objective("forget", DENOISE, target=erasediff.uniform_target)
  np.testing.assert_allclose(loss_of(objective), np.mean((eps_np(PARAMS, X_T, LABELS) - t) ** 2), rtol=1e-5)


def test_value_fn_objective_in_train_step_logs_g_lambda_and_cosines():
  value_fn = erasediff.value_gap(3, 0.2, "fixed")
  alt = np.array([1, 2, 3, 0, 4], np.int32)   # c -> c + 1
  from unlearn_jax.unlearning import salun
  objectives = {"retain": training.Objective("retain", DENOISE),
                "forget": training.Objective("forget", DENOISE, target=salun.random_label_target(alt),
                                             value_fn=value_fn)}
  spec = make_spec(**objectives)
  tx = optax.chain(erasediff.erasediff(eta=0.5), optax.sgd(0.1))
  state = ts.create(PARAMS, tx)
  batches = {"retain": BATCH, "forget": BATCH}
  new, m = training.train_step(state, batches, jax.random.key(0), spec=spec, tx=tx)
  for k in ("method/lambda_t", "method/cos_update_retain", "method/cos_update_forget", "loss/forget"):
    assert np.isfinite(float(m[k])), k
  # loss/forget is g = L_f(theta) - L_f(phi^3) >= 0, with the target fixed at theta.
  rng = jax.random.fold_in(jax.random.key(0), 0)
  keys = training.example_keys(jax.random.fold_in(rng, 1), 3)
  inputs = training.objective_inputs(PARAMS, BATCH, keys, spec, objectives["forget"])
  lf = functools.partial(training.loss_given_inputs, inputs=inputs, dropout_rng=None, spec=spec,
                         objective=objectives["forget"])
  phi = erasediff.inner_descent(lf, PARAMS, 3, 0.2)
  np.testing.assert_allclose(m["loss/forget"], lf(PARAMS) - lf(phi), rtol=1e-4)
  assert float(m["loss/forget"]) > 0.0


BATCH_F = {"x": X[::-1].copy(), "labels": np.array([3, 3, 0], np.int32)}


def _erasediff_step(lr=0.05, **options):
  """One train step of methods.build("erasediff") (eps_f ~ U(0, I)) with config.optim.name="sgd"."""
  c = method_config()
  c.erasediff.update(dict(target="noise", **options))
  objectives, method, _ = methods.build("erasediff", "", settings.of(c), alt=np.arange(K + 1), steps=1, forget=(3,),
                                        num_classes=K)
  spec = make_spec(**objectives)
  tx = training.make_optimizer(lr, warmup=0, grad_clip=0.0, method=method, name="sgd")
  rng = jax.random.key(0)
  new, _ = training.train_step(ts.create(PARAMS, tx), {"retain": BATCH, "forget": BATCH_F}, rng,
                               spec=spec, tx=tx)
  step_rng = jax.random.fold_in(rng, 0)
  inputs = {n: training.objective_inputs(PARAMS, b, training.example_keys(jax.random.fold_in(step_rng, i), 3),
                                         spec, objectives[n])
            for i, (n, b) in enumerate((("retain", BATCH), ("forget", BATCH_F)))}
  return new.params, inputs


def _hand_update(inputs, lr=0.05, inner_steps=2, inner_lr=0.2, eta=1.5, rule="paper", lam=0.1):
  """theta - lr (grad L_r + lambda_t (grad L_f(theta) - grad L_f(phi^K))), phi^K by hand."""
  theta = {k: np.asarray(v, np.float64) for k, v in PARAMS.items()}
  phi = dict(theta)
  for _ in range(inner_steps):
    phi = {k: v - inner_lr * tiny_model_grads(phi, inputs["forget"])[k] for k, v in phi.items()}
  gf_theta, gf_phi = tiny_model_grads(theta, inputs["forget"]), tiny_model_grads(phi, inputs["forget"])
  gr = tiny_model_grads(theta, inputs["retain"])
  gg = {k: gf_theta[k] - gf_phi[k] for k in theta}
  dot = sum(gg[k] @ gr[k] for k in theta)
  norm2 = sum(gg[k] @ gg[k] for k in theta)
  if rule == "constant":
    lam_t = lam
  else:
    lam_t = max(0.0, eta - dot / norm2) if norm2 > 0 else 0.0
  return {k: theta[k] - lr * (gr[k] + lam_t * gg[k]) for k in theta}, lam_t


def test_erasediff_update_from_the_config_equals_the_hand_computation():
  # config.erasediff.{inner_steps, inner_lr, eta, rule, lam} all reach the update of the default
  # grad form, and config.optim.name="sgd" is theta - lr delta_t exactly.
  cases = [dict(inner_steps=2, inner_lr=0.2, eta=1.5), dict(inner_steps=0, inner_lr=0.2, eta=1.5),
           dict(inner_steps=5, inner_lr=0.2, eta=1.5), dict(inner_steps=2, inner_lr=0.05, eta=1.5),
           dict(inner_steps=2, inner_lr=0.2, eta=0.3), dict(inner_steps=2, inner_lr=0.2, eta=1.5,
                                                             rule="constant", lam=0.7)]
  got = []
  for case in cases:
    params, inputs = _erasediff_step(**case)
    expected, lam_t = _hand_update(inputs, **case)
    if case["inner_steps"] and case["eta"] == 1.5:
      assert lam_t > 0.0, case                    # the constraint is active: eta shapes the update
    for k in ("w", "b"):
      np.testing.assert_allclose(params[k], expected[k], rtol=1e-5, atol=1e-7, err_msg=str(case))
    got.append(flat(params))
  for i in range(1, len(cases)):                  # K 2/0/5, xi, eta and the rule each change it
    assert not np.allclose(got[0], got[i], rtol=1e-6, atol=1e-8), cases[i]
  assert not np.allclose(got[1], got[2], rtol=1e-6, atol=1e-8)


def test_erasediff_rolled_inner_loop_is_the_same_update(monkeypatch):
  # config.erasediff.unroll=False (one lax.scan body: less to compile for the SD UNet) reaches
  # the inner loop and gives the hand-computed update of K = 5 steps.
  seen = []
  real = erasediff.inner_descent
  monkeypatch.setattr(erasediff, "inner_descent", lambda *a: seen.append(a[-1]) or real(*a))
  case = dict(inner_steps=5, inner_lr=0.2, eta=1.5)
  params, inputs = _erasediff_step(unroll=False, **case)
  assert seen and not any(seen), seen
  expected, _ = _hand_update(inputs, **case)
  for k in ("w", "b"):
    np.testing.assert_allclose(params[k], expected[k], rtol=1e-5, atol=1e-7)
  bad = settings.replace(settings.of(method_config()), "erasediff.unroll", "no")
  with pytest.raises(UserError) as e:
    methods.build("erasediff", "", bad, alt=np.arange(K + 1), steps=1, forget=(3,), num_classes=K)
  assert e.value.field == "config.erasediff.unroll"


def test_erasediff_fixed_grad_form_update_is_the_same_for_every_k_and_xi():
  # The option that treats phi^K as a constant: K and xi change only the logged g.
  ref, _ = _erasediff_step(inner_steps=0, inner_lr=0.2, eta=1.5, grad_form="fixed")
  for k, xi in ((2, 0.2), (5, 0.05)):
    params, _ = _erasediff_step(inner_steps=k, inner_lr=xi, eta=1.5, grad_form="fixed")
    np.testing.assert_array_equal(flat(params), flat(ref))


def _erasediff_pipeline_config():
  c = config_lib.ddpm_base()
  c.data.update(dict(name="digits", image_size=8, num_channels=1, forget_classes=(3,)))
  c.model.update(dict(ch=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=()))
  c.stages, c.stage_order = config_lib.dimum_stages(pretrain_steps=1, unlearn_steps=1, attack_steps=1, eval_every=1,
                                                    methods=("erasediff",), attack_data=("retain",))
  return c


def test_bad_optimizer_name_is_rejected_before_the_experiment_is_built():
  from unlearn_jax import pipeline
  c = _erasediff_pipeline_config()
  c.optim.name = "adamw"
  with pytest.raises(UserError) as e:
    pipeline.build_experiment(c)
  assert e.value.field == "config.optim.name"


def test_erasediff_couple_lr_makes_eta_the_stage_step_size(monkeypatch, tmp_path):
  # methods.build -> Options.lr -> train_stage.run -> make_optimizer(lr=eta, name=optim.name).
  from unlearn_jax import pipeline
  c = _erasediff_pipeline_config()
  c.stages.erasediff.lr = 3e-3
  c.erasediff.eta = 0.25
  c.optim.name = "sgd"
  exp = pipeline.build_experiment(c)
  seen = []

  class Stop(Exception):
    pass

  def fake(lr, **kw):
    seen.append((lr, kw["name"]))
    raise Stop()

  monkeypatch.setattr(training, "make_optimizer", fake)
  for couple, lr in ((False, 3e-3), (True, 0.25)):
    exp.config = settings.replace(exp.config, "erasediff.couple_lr", couple)
    with pytest.raises(Stop):
      train_stage.run(exp, "erasediff", exp.config.stages["erasediff"], str(tmp_path))
    assert seen[-1] == (lr, "sgd")
  assert methods.build("erasediff", "", settings.of(method_config()), alt=np.arange(10), steps=1, forget=(3,),
                       num_classes=10)[2].lr is None


TRAIN_W = {"w": True, "b": False}


def test_erasediff_inner_loop_moves_only_the_trainable_leaves():
  # With b frozen, g = L_f(theta) - L_f(phi^K) where phi^K differs from theta in w only: the
  # same as the full model's value gap when b's inner learning rate is zero.
  gap = erasediff.value_gap(2, 0.5, "fixed")
  objective = training.Objective("forget", DENOISE, value_fn=gap)
  spec = dataclasses.replace(make_spec(forget=objective), trainable=TRAIN_W)
  state = ts.create(PARAMS, optax.sgd(0.1))
  value, grads = training._objective_grad(state, {"forget": BATCH}, jax.random.key(0), DROPOUT, 0, "forget",
                                          spec, {})
  inputs = training.objective_inputs(PARAMS, BATCH, training.example_keys(jax.random.fold_in(jax.random.key(0), 0),
                                                                         3), spec, objective)
  loss = lambda w: training.loss_given_inputs({"w": w, "b": PARAMS["b"]}, inputs, jax.random.fold_in(DROPOUT, 0),
                                              spec, objective)
  expected, expected_grad = gap(loss, PARAMS["w"])
  np.testing.assert_allclose(value, expected, rtol=1e-5)
  np.testing.assert_allclose(grads["w"], expected_grad, rtol=1e-5)
  np.testing.assert_array_equal(grads["b"], np.zeros_like(PARAMS["b"]))
