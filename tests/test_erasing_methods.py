"""EraseDiff, CORE, ESD, Concept Ablation, Selective Amnesia, Scissorhands and NegGrad
against hand-computed values, and their composition (masks, EraseDiff on CORE's losses)."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from unlearn_jax import config_lib, losses, sampling, training
from unlearn_jax import sde as sde_lib
from unlearn_jax import train_state as ts
from unlearn_jax.errors import UserError
from unlearn_jax.unlearning import (combine, core, erasediff, esd, gradient_ascent, methods, saliency,
                                    scissorhands, selective_amnesia)
from unlearn_jax.stages import train as train_stage

R = {"a": jnp.array([1.0, -2.0]), "b": {"c": jnp.array([[0.5, 3.0], [-1.0, 4.0]])}}
G = {"a": jnp.array([2.0, 1.0]), "b": {"c": jnp.array([[1.0, -1.0], [0.0, 2.0]])}}
MASK = {"a": jnp.array([1.0, 0.0]), "b": {"c": jnp.array([[0.0, 1.0], [1.0, 0.0]])}}


def flat(tree):
  return np.concatenate([np.ravel(np.asarray(l)) for l in jax.tree_util.tree_leaves(tree)])


def close(tree, expected, rtol=1e-5, atol=1e-6):
  for a, b in zip(jax.tree_util.tree_leaves(tree), jax.tree_util.tree_leaves(expected), strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)


# ----------------------------------------------------------------------------- EraseDiff: lambda_t and delta_t

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


# ----------------------------------------------------------------------------- EraseDiff: the value gap

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
FROZEN = {"w": jnp.array([1.0, -0.5, 0.4, 0.9, 1.2]), "b": jnp.array([0.3, 0.2, -0.6, 0.7, 0.05])}
DENOISE = functools.partial(losses.denoising_loss, reduce="mean")
KEYS = training.example_keys(jax.random.key(1), 3, None)
DROPOUT = jax.random.key(2)
BATCH = {"x": X, "labels": LABELS}


def apply_fn(variables, x, time, labels, train=False, rngs=None):
  del time, train, rngs
  p = variables["params"]
  return x * p["w"][labels][:, None, None, None] + p["b"][labels][:, None, None, None]


def make_spec(**objectives):
  return training.StepSpec(apply_fn=apply_fn, process=PROCESS, output_type="eps", objectives=objectives,
                           weighting="simple", conditional=True, null_label=K)


def eps_np(params, x_t, labels):
  w, b = np.asarray(params["w"]), np.asarray(params["b"])
  return np.asarray(x_t) * w[labels][:, None, None, None] + b[labels][:, None, None, None]


def loss_of(objective, params=PARAMS, consts=None, batch=BATCH):
  return training.objective_loss(params, batch, KEYS, DROPOUT, make_spec(forget=objective), objective,
                                 consts)


X_T = training.perturb_examples(PROCESS, jnp.asarray(X), KEYS, "simple").x_t


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
  new, m = training.train_step(state, batches, jax.random.key(0), spec=spec, tx=tx, axis_name=None)
  for k in ("method/lambda_t", "method/cos_update_retain", "method/cos_update_forget", "loss/forget"):
    assert np.isfinite(float(m[k])), k
  # loss/forget is g = L_f(theta) - L_f(phi^3) >= 0, with the target fixed at theta.
  rng = jax.random.fold_in(jax.random.key(0), 0)
  keys = training.example_keys(jax.random.fold_in(rng, 1), 3, None)
  inputs = training.objective_inputs(PARAMS, BATCH, keys, spec, objectives["forget"])
  lf = functools.partial(training.loss_given_inputs, inputs=inputs, dropout_rng=None, spec=spec,
                         objective=objectives["forget"])
  phi = erasediff.inner_descent(lf, PARAMS, 3, 0.2)
  np.testing.assert_allclose(m["loss/forget"], lf(PARAMS) - lf(phi), rtol=1e-4)
  assert float(m["loss/forget"]) > 0.0


# ----------------------------------------------------------------------------- EraseDiff: config -> update, by hand

BATCH_F = {"x": X[::-1].copy(), "labels": np.array([3, 3, 0], np.int32)}


def _tiny_model_grads(params, inputs):
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


def _erasediff_step(lr=0.05, **options):
  """One train step of methods.build("erasediff") (eps_f ~ U(0, I)) with config.optim.name="sgd"."""
  c = method_config()
  c.erasediff.update(dict(target="noise", **options))
  objectives, method, _ = methods.build("erasediff", "", c, alt=np.arange(K + 1), steps=1, forget=(3,),
                                        num_classes=K)
  spec = make_spec(**objectives)
  tx = training.make_optimizer(lr, warmup=0, grad_clip=0.0, method=method, name="sgd")
  rng = jax.random.key(0)
  new, _ = training.train_step(ts.create(PARAMS, tx), {"retain": BATCH, "forget": BATCH_F}, rng,
                               spec=spec, tx=tx, axis_name=None)
  step_rng = jax.random.fold_in(rng, 0)
  inputs = {n: training.objective_inputs(PARAMS, b, training.example_keys(jax.random.fold_in(step_rng, i), 3, None),
                                         spec, objectives[n])
            for i, (n, b) in enumerate((("retain", BATCH), ("forget", BATCH_F)))}
  return new.params, inputs


def _hand_update(inputs, lr=0.05, inner_steps=2, inner_lr=0.2, eta=1.5, rule="paper", lam=0.1):
  """theta - lr (grad L_r + lambda_t (grad L_f(theta) - grad L_f(phi^K))), phi^K by hand."""
  theta = {k: np.asarray(v, np.float64) for k, v in PARAMS.items()}
  phi = dict(theta)
  for _ in range(inner_steps):
    phi = {k: v - inner_lr * _tiny_model_grads(phi, inputs["forget"])[k] for k, v in phi.items()}
  gf_theta, gf_phi = _tiny_model_grads(theta, inputs["forget"]), _tiny_model_grads(phi, inputs["forget"])
  gr = _tiny_model_grads(theta, inputs["retain"])
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
    exp.config.erasediff.couple_lr = couple
    with pytest.raises(Stop):
      train_stage.run(exp, "erasediff", exp.config.stages.erasediff, str(tmp_path))
    assert seen[-1] == (lr, "sgd")
  assert methods.build("erasediff", "", method_config(), alt=np.arange(10), steps=1, forget=(3,),
                       num_classes=10)[2].lr is None


# ----------------------------------------------------------------------------- CORE


def test_core_one_to_one_maps_to_distinct_retained_classes():
  cand = core.anchor_candidates(10, (3, 4), "one_to_one")
  assert cand.shape == (10, 1)
  assert cand[3, 0] == 5 and cand[4, 0] == 6        # next retained, unused
  assert [cand[c, 0] for c in range(10) if c not in (3, 4)] == [c for c in range(10) if c not in (3, 4)]


def test_core_one_to_one_among_forget_classes_when_few_are_retained():
  cand = core.anchor_candidates(5, (0, 1, 2, 3), "one_to_one")
  assert [int(cand[c, 0]) for c in (0, 1, 2, 3)] == [1, 2, 3, 0]
  assert all(cand[c, 0] != c for c in (0, 1, 2, 3))


def test_core_all_to_one_and_groups_to_one():
  cand = core.anchor_candidates(10, (0, 1, 2, 3, 4, 5, 6), "all_to_one")
  assert set(cand[[0, 1, 2, 3, 4, 5, 6], 0]) == {7}
  assert core.anchor_candidates(10, (0, 1), "all_to_one", base=9)[0, 0] == 9
  with pytest.raises(UserError, match="config.core.base"):
    core.anchor_candidates(10, (0, 1), "all_to_one", base=1)
  cand = core.anchor_candidates(12, tuple(range(7)), "groups_to_one", group_size=5)
  assert set(cand[:5, 0]) == {7} and set(cand[5:7, 0]) == {8}


def test_core_random_and_random_k_candidates():
  cand = core.anchor_candidates(6, (2,), "random")
  assert cand.shape == (6, 5) and 2 not in cand[2] and sorted(cand[2]) == [0, 1, 3, 4, 5]
  assert (cand[0] == 0).all()
  ck = core.anchor_candidates(10, (2, 5), "random_k", k=3, seed=1)
  assert ck.shape == (10, 3) and len(set(ck[2])) == 3 and 2 not in ck[2] and 5 not in ck[5]
  np.testing.assert_array_equal(ck, core.anchor_candidates(10, (2, 5), "random_k", k=3, seed=1))
  with pytest.raises(UserError, match="config.core.k"):
    core.anchor_candidates(4, (1,), "random_k", k=4)


def test_core_draws_cover_the_candidates_and_vary_with_the_key():
  cand = core.anchor_candidates(6, (2,), "random")
  labels = jnp.full((600,), 2, jnp.int32)
  keys = training.example_keys(jax.random.key(3), 600, None)
  drawn = np.asarray(core.draw_anchor(cand, labels, keys))
  assert set(drawn.tolist()) == {0, 1, 3, 4, 5}
  assert np.asarray(core.draw_anchor(core.anchor_candidates(6, (2,), "one_to_one"), labels, keys)).tolist() \
      == [3] * 600


def test_core_losses_use_the_frozen_model_hand_values():
  cand = core.anchor_candidates(K, (1, 2), "one_to_one")      # 1 -> 3, 2 -> 0
  forget = training.Objective("forget", DENOISE, target=core.anchor_target(cand))
  got = loss_of(forget, consts={"frozen": FROZEN})
  want = np.mean((eps_np(PARAMS, X_T, LABELS) - eps_np(FROZEN, X_T, cand[LABELS, 0])) ** 2)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  retain = training.Objective("forget", DENOISE, target=core.frozen_target)
  got = loss_of(retain, consts={"frozen": FROZEN})
  np.testing.assert_allclose(got, np.mean((eps_np(PARAMS, X_T, LABELS) - eps_np(FROZEN, X_T, LABELS)) ** 2),
                             rtol=1e-5)
  # the frozen tree gets no gradient and the target does not move with theta
  grads = jax.grad(lambda p: loss_of(forget, params=p, consts={"frozen": FROZEN}))(PARAMS)
  x_t = np.asarray(X_T)
  hand = jax.grad(lambda p: jnp.mean((apply_fn({"params": p}, x_t, None, LABELS)
                                      - eps_np(FROZEN, x_t, cand[LABELS, 0])) ** 2))(PARAMS)
  close(grads, hand)


# ----------------------------------------------------------------------------- ESD


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


# ----------------------------------------------------------------------------- Concept Ablation


def test_ca_model_based_target_is_current_model_at_anchor_stop_gradient():
  cfg = method_config()
  alt = np.array([0, 3, 3, 3, 4], np.int32)
  objectives, tx, _ = methods.build("ca", "model", cfg, alt=alt, steps=4, forget=(1, 2), num_classes=K)
  ablate = objectives["forget"]
  assert ablate.stream == "alternative" and objectives["retain"].target is None
  got = loss_of(ablate)
  np.testing.assert_allclose(got, np.mean((eps_np(PARAMS, X_T, LABELS) - eps_np(PARAMS, X_T, alt[LABELS])) ** 2),
                             rtol=1e-5)
  grads = jax.grad(lambda p: loss_of(ablate, params=p))(PARAMS)
  assert float(grads["w"][3]) == 0.0 and float(grads["b"][3]) == 0.0   # the anchor only in the target
  noise_objectives, _, _ = methods.build("ca", "noise", cfg, alt=alt, steps=4, forget=(1, 2), num_classes=K)
  assert noise_objectives["forget"].target is None
  out, _ = tx.update(R, tx.init(R), None, retain_grads=G)
  close(out, jax.tree_util.tree_map(lambda a, b: a + 0.5 * b, R, G))     # prior weight 0.5


# ----------------------------------------------------------------------------- Selective Amnesia


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
      gr = _tiny_model_grads(PARAMS, inputs)
      g.append(scale * np.concatenate([gr["b"], gr["w"]]))
    g = np.array(g)
    per_sample.append(_u_stat(g))
    old.append(np.mean(g, 0) ** 2)
  expected = np.maximum(np.mean(per_sample, 0), 0.0)
  np.testing.assert_allclose(np.concatenate([f["b"], f["w"]]), expected, rtol=1e-4, atol=1e-6)
  assert not np.allclose(expected, np.mean(old, 0), rtol=0.05)
  assert np.all(np.asarray(f["w"])[[0, 3, 4]] == 0.0)       # classes without samples (0, 3; the null 4)


# ----------------------------------------------------------------------------- Scissorhands, NegGrad


def test_snip_scores_and_reset_fraction():
  params = {"a": jnp.array([1.0, -3.0, 0.5, 2.0]), "b": jnp.array([[0.1, -4.0], [1.0, 0.0]])}
  abs_grads = {"a": jnp.array([2.0, 0.1, 4.0, 1.0]), "b": jnp.array([[5.0, 1.0], [0.2, 9.0]])}
  s = scissorhands.snip_scores(abs_grads, params)
  np.testing.assert_allclose(s["a"], [2.0, 0.3, 2.0, 2.0])
  np.testing.assert_allclose(s["b"], [[0.5, 4.0], [0.2, 0.0]])
  mask = saliency.top_fraction_mask(s, 1.0 - 0.75, field="config.shs.sparsity")   # reset 2 of 8
  assert saliency.kept_fraction(mask) == 0.25
  assert int(mask["b"][0, 1]) == 1 and int(mask["a"][0]) == 1      # 4.0 and the first 2.0 (ties by position)
  fresh = jax.tree_util.tree_map(lambda x: jnp.full_like(x, 7.0), params)
  out = scissorhands.reset(params, fresh, mask)
  changed = sum(int(np.sum(np.asarray(o) != np.asarray(p))) for o, p in zip(
      jax.tree_util.tree_leaves(out), jax.tree_util.tree_leaves(params)))
  assert changed == 2 and float(out["b"][0, 1]) == 7.0 and float(out["a"][1]) == -3.0


def test_scissorhands_and_neggrad_combinations():
  tx = scissorhands.scissorhands(0.1)
  out, _ = tx.update(R, tx.init(R), None, forget_grads=G)
  close(out, jax.tree_util.tree_map(lambda a, b: a - 0.1 * b, R, G))
  tx = gradient_ascent.neggrad()
  out, _ = tx.update(G, tx.init(G), None)
  close(out, jax.tree_util.tree_map(jnp.negative, G))


def test_accumulate_absolute_sums_abs_gradients():
  grads = iter([{"w": jnp.array([1.0, -2.0])}, {"w": jnp.array([-3.0, 1.0])}])
  out = saliency.accumulate(lambda p, b: next(grads), None, [0, 1], absolute=True)
  np.testing.assert_allclose(out["w"], [4.0, 3.0])


# ----------------------------------------------------------------------------- the registry and composition


def method_config():
  c = config_lib.base()
  c.training.reduce = "mean"
  c.ca.prior_weight = 0.5
  c.core.alpha = 2.0
  c.sa.update(dict(gamma=0.5, lam=3.0))
  c.shs.gamma = 0.2
  c.erasediff.update(dict(eta=0.8, rule="paper", inner_steps=1, inner_lr=0.1))
  return c


NEW = {  # method: ([(objective, stream)], Options)
    "neggrad": ([("forget", "forget")], methods.Options()),
    "erasediff": ([("retain", "retain"), ("forget", "forget")], methods.Options()),
    "core": ([("forget", "forget"), ("retain", "retain")], methods.Options(frozen=True)),
    "esd": ([("forget", "forget")], methods.Options(frozen=True)),
    "ca": ([("forget", "alternative"), ("retain", "retain")], methods.Options()),
    "sa": ([("forget", "forget"), ("replay", "retain")], methods.Options(mask="fisher", frozen=True)),
    "shs": ([("retain", "retain"), ("forget", "forget")], methods.Options(mask="shs", reset=True)),
}


@pytest.mark.parametrize("method", sorted(NEW))
def test_build_new_methods(method):
  objectives, tx, options = methods.build(method, "", method_config(), alt=np.arange(10), steps=4,
                                          forget=(3,), num_classes=10)
  names, want = NEW[method]
  assert [(n, o.stream) for n, o in objectives.items()] == names
  assert options == want
  assert (tx is None) == (method == "esd")


def test_build_variants_override_the_config_for_one_stage():
  cfg = method_config()
  cfg.lock()
  objectives, _, options = methods.build("erasediff", "core", cfg, alt=np.arange(10), steps=4, forget=(3,),
                                         num_classes=10)
  assert options.frozen and objectives["retain"].target is core.frozen_target
  assert objectives["forget"].value_fn is not None
  assert cfg.erasediff.target == "rl"               # the config itself is unchanged
  with pytest.raises(UserError, match="config.core.scheme"):
    methods.build("core", "bogus", cfg, alt=np.arange(10), steps=4, forget=(3,), num_classes=10)
  with pytest.raises(UserError, match="config.esd.base"):
    cfg2 = method_config()
    cfg2.esd.base = 3
    methods.build("esd", "", cfg2, alt=np.arange(10), steps=4, forget=(3,), num_classes=10)


def test_a_salun_mask_composes_with_core():
  from unlearn_jax import pipeline
  _, tx, options = methods.build("core", "", method_config(), alt=np.arange(10), steps=4, forget=(3,),
                                 num_classes=10)
  composed = train_stage.with_mask(tx, options, {"mask": MASK})
  out, _ = composed.update(R, composed.init(R), None, retain_grads=G, mask=MASK)
  close(out, jax.tree_util.tree_map(lambda a, b, m: (a + 2.0 * b) * m, R, G, MASK))
  assert train_stage.with_mask(tx, options, {}) is tx


# ----------------------------------------------------------------------------- trainable subsets (SD's cross-attention)
TRAIN_W = {"w": True, "b": False}


def _one_step(objectives, tx, trainable, params=PARAMS):
  spec = dataclasses.replace(make_spec(**objectives), trainable=trainable)
  state = ts.create(params, tx)
  batches = {o.stream: BATCH for o in objectives.values()}
  new, _ = training.train_step(state, batches, jax.random.key(0), {}, spec=spec, tx=tx, axis_name=None)
  return new


def test_trainable_subset_gets_the_full_gradient_and_frozen_leaves_stay():
  objective = training.Objective("forget", DENOISE)
  full = _one_step({"forget": objective}, optax.sgd(0.1), None)
  sub = _one_step({"forget": objective}, optax.sgd(0.1), TRAIN_W)
  np.testing.assert_allclose(sub.params["w"], full.params["w"], rtol=1e-6)   # same gradient on w
  np.testing.assert_array_equal(sub.params["b"], PARAMS["b"])                  # b frozen
  assert not np.allclose(full.params["b"], PARAMS["b"])


def test_erasediff_inner_loop_moves_only_the_trainable_leaves():
  # With b frozen, g = L_f(theta) - L_f(phi^K) where phi^K differs from theta in w only: the
  # same as the full model's value gap when b's inner learning rate is zero.
  gap = erasediff.value_gap(2, 0.5, "fixed")
  objective = training.Objective("forget", DENOISE, value_fn=gap)
  spec = dataclasses.replace(make_spec(forget=objective), trainable=TRAIN_W)
  state = ts.create(PARAMS, optax.sgd(0.1))
  value, grads = training._objective_grad(state, {"forget": BATCH}, jax.random.key(0), DROPOUT, 0, "forget",
                                          spec, {}, None)
  inputs = training.objective_inputs(PARAMS, BATCH, training.example_keys(jax.random.fold_in(jax.random.key(0), 0),
                                                                         3, None), spec, objective)
  loss = lambda w: training.loss_given_inputs({"w": w, "b": PARAMS["b"]}, inputs, jax.random.fold_in(DROPOUT, 0),
                                              spec, objective)
  expected, expected_grad = gap(loss, PARAMS["w"], None)
  np.testing.assert_allclose(value, expected, rtol=1e-5)
  np.testing.assert_allclose(grads["w"], expected_grad, rtol=1e-5)
  np.testing.assert_array_equal(grads["b"], np.zeros_like(PARAMS["b"]))


def test_optimizer_keeps_adam_moments_for_the_trainable_leaves_only():
  objective = training.Objective("forget", DENOISE)
  masked = _one_step({"forget": objective}, training.make_optimizer(0.1, grad_clip=0.0, trainable=TRAIN_W),
                     TRAIN_W)
  full = _one_step({"forget": objective}, training.make_optimizer(0.1, grad_clip=0.0), TRAIN_W)
  np.testing.assert_allclose(masked.params["w"], full.params["w"], rtol=1e-6)
  np.testing.assert_array_equal(masked.params["b"], PARAMS["b"])
  moments = lambda s: sum(np.size(x) == 5 for x in jax.tree_util.tree_leaves(s.opt_state))
  assert moments(full) == 4 and moments(masked) == 2       # mu and nu of w only
