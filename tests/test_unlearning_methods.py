"""DiMUM, SalUn, gradient ascent, SFR-on and the mask stages against hand-computed values.

(Classifier-free guidance, (1 + w) eps(x, c) - w eps(x, null), is checked with hand
values in test_sampling.py.)
"""
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from unlearn_jax import config_lib, data as data_lib, losses, training
from unlearn_jax import sde as sde_lib
from unlearn_jax import train_state as ts
from unlearn_jax.errors import UserError
from unlearn_jax.unlearning import combine, core, dimum, gradient_ascent, methods, saliency, salun, sfron

U = {"a": jnp.array([1.0, -2.0]), "b": {"c": jnp.array([[0.5, 3.0], [-1.0, 4.0]])}}
F = {"a": jnp.array([2.0, 1.0]), "b": {"c": jnp.array([[1.0, -1.0], [0.0, 2.0]])}}
M = {"a": jnp.array([-1.0, 0.5]), "b": {"c": jnp.array([[2.0, 0.0], [1.0, -3.0]])}}
MASK = {"a": jnp.array([1.0, 0.0]), "b": {"c": jnp.array([[0.0, 1.0], [1.0, 0.0]])}}


def close(tree, expected, **kw):
  for a, b in zip(jax.tree_util.tree_leaves(tree), jax.tree_util.tree_leaves(expected), strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6, **kw)


def combo(fn, *trees):
  return jax.tree_util.tree_map(fn, *trees)


def update(tx, updates, **extra):
  out, _ = tx.update(updates, tx.init(updates), None, **extra)
  return out


# ----------------------------------------------------------------------------- combine / methods' transforms


def test_weighted_sum_hand_values_and_missing_extra():
  tx = combine.weighted_sum(0.5, forget=-1.0, memorize=2.0)
  out = update(tx, U, forget_grads=F, memorize_grads=M)
  close(out, combo(lambda u, f, m: 0.5 * u - f + 2.0 * m, U, F, M))
  np.testing.assert_allclose(out["a"], [0.5 - 2.0 - 2.0, -1.0 - 1.0 + 1.0])
  with pytest.raises(TypeError, match="memorize_grads"):
    update(tx, U, forget_grads=F)


def test_masked_multiplies_by_mask_or_passes_through():
  close(update(combine.masked(), U, mask=MASK), combo(lambda u, m: u * m, U, MASK))
  close(update(combine.masked(), U), U)


def test_chain_passes_extras_to_weighted_sum_and_masked():
  tx = optax.chain(combine.weighted_sum(0.5, forget=-1.0), combine.masked(), optax.sgd(1.0))
  out = update(tx, U, forget_grads=F, mask=MASK)
  close(out, combo(lambda u, f, m: -(0.5 * u - f) * m, U, F, MASK))


def test_dimum_is_retain_plus_beta_memorize():
  # Eq. 11 / Algorithm 1 line 16: L_r + beta L_u.
  close(update(dimum.dimum(0.3), U, memorize_grads=M), combo(lambda r, u: r + 0.3 * u, U, M))


def test_gradient_ascent_is_beta_retain_minus_forget():
  # Eq. 5: beta L_r - L_u.
  close(update(gradient_ascent.gradient_ascent(0.3), U, forget_grads=F),
        combo(lambda r, f: 0.3 * r - f, U, F))


def test_salun_is_masked_forget_plus_beta_retain():
  close(update(salun.salun(0.1), F, retain_grads=U, mask=MASK),
        combo(lambda f, r, m: (f + 0.1 * r) * m, F, U, MASK))
  close(update(salun.salun(0.1), F, retain_grads=U), combo(lambda f, r: f + 0.1 * r, F, U))


# ----------------------------------------------------------------------------- DiMUM's alternative classes


def test_alternative_classes_next():
  alt = dimum.alternative_classes(10, (3,), "next")
  np.testing.assert_array_equal(alt, [0, 1, 2, 4, 4, 5, 6, 7, 8, 9])
  alt = dimum.alternative_classes(10, (3, 4), "next")
  assert alt[3] == 5 and alt[4] == 5
  np.testing.assert_array_equal(np.delete(alt, [3, 4]), np.delete(np.arange(10), [3, 4]))
  assert dimum.alternative_classes(10, (9,), "next")[9] == 0
  assert dimum.alternative_classes(10, (8, 9, 0), "next")[8] == 1


def test_alternative_classes_map():
  alt = dimum.alternative_classes(10, (3,), "map:3=5")
  np.testing.assert_array_equal(alt, [0, 1, 2, 5, 4, 5, 6, 7, 8, 9])
  alt = dimum.alternative_classes(10, (3, 7), "map:3=5,7=1")
  assert alt[3] == 5 and alt[7] == 1


@pytest.mark.parametrize("forget,scheme", [
    ((3,), "map:3=3"),
    ((3, 5), "map:3=5,5=1"),
    ((3,), "map:x"),
    ((3,), "map:3"),
    ((3,), "map:3=10"),
    ((3, 7), "map:3=5"),
    ((3,), "bogus"),
    (tuple(range(10)), "next"),
])
def test_alternative_classes_bad_input_raises_user_error(forget, scheme):
  with pytest.raises(UserError):
    dimum.alternative_classes(10, forget, scheme)


def test_alternative_classes_random_is_retained_and_seeded():
  forget = (2, 3, 7)
  a = dimum.alternative_classes(10, forget, "random", seed=4)
  np.testing.assert_array_equal(a, dimum.alternative_classes(10, forget, "random", seed=4))
  for c in range(10):
    assert (a[c] not in forget) if c in forget else a[c] == c
  draws = {tuple(dimum.alternative_classes(10, forget, "random", seed=s)[list(forget)]) for s in range(8)}
  assert len(draws) > 1


def test_alternative_classes_map_leaves_retained_classes():
  with pytest.raises(UserError):   # 7 is not forgotten: the entry is rejected
    dimum.alternative_classes(10, (3,), "map:3=5,7=1")


# ----------------------------------------------------------------------------- DiMUM's memorization set D_u'


def dataset(labels, offset, num_classes=6):
  """Image i is filled with offset + i, so every image names its source."""
  labels = np.asarray(labels, np.int32)
  images = (offset + np.arange(len(labels), dtype=np.uint8))[:, None, None, None] * np.ones((1, 2, 2, 1), np.uint8)
  return data_lib.Dataset(name="t", images=images, labels=labels, num_classes=num_classes,
                          class_names=tuple(str(c) for c in range(num_classes)), source=f"src{offset}",
                          is_image=True)


# retain: classes 0, 1, 2, 4, 5 (none of class 3); values 0..11
RETAIN = dataset([0, 0, 1, 4, 2, 4, 5, 4, 5, 1, 4, 5], offset=0)
FORGET = dataset([3, 3, 3], offset=200)


def sources(ds):
  assert np.all(ds.images == ds.images[:, :1, :1, :1])
  return ds.images[:, 0, 0, 0].astype(np.int64)


def test_memorization_set_next_draws_alternative_class_without_replacement():
  alt = dimum.alternative_classes(6, (3,), "next")
  assert alt[3] == 4
  mem = dimum.memorization_set(FORGET, RETAIN, alt, "next", seed=1)
  assert len(mem) == len(FORGET)
  np.testing.assert_array_equal(mem.labels, FORGET.labels)  # conditions from D_f (Eq. 9)
  src = sources(mem)
  assert np.all(RETAIN.labels[src] == 4)
  assert len(set(src.tolist())) == len(src)  # pool of 4 >= 3 rows
  again = dimum.memorization_set(FORGET, RETAIN, alt, "next", seed=1)
  np.testing.assert_array_equal(again.images, mem.images)


def test_memorization_set_reuses_a_small_pool_evenly():
  forget = dataset([3] * 6, offset=200)
  mem = dimum.memorization_set(forget, RETAIN, dimum.alternative_classes(6, (3,), "next"), "next")
  counts = np.bincount(sources(mem), minlength=len(RETAIN))
  np.testing.assert_array_equal(np.flatnonzero(counts), np.flatnonzero(RETAIN.labels == 4))
  assert counts.max() == 2  # 6 rows from a pool of 4: every image once, then 2 more


def test_memorization_set_keeps_each_rows_condition():
  forget = dataset([3, 0, 3, 3, 0], offset=200)
  alt = dimum.alternative_classes(6, (0, 3), "map:0=2,3=5")
  mem = dimum.memorization_set(forget, RETAIN, alt, "map:0=2,3=5", seed=2)
  np.testing.assert_array_equal(mem.labels, forget.labels)
  np.testing.assert_array_equal(RETAIN.labels[sources(mem)], np.where(forget.labels == 3, 5, 2))


def test_memorization_set_random_draws_from_all_of_retain():
  forget = dataset([3] * 10, offset=200)
  alt = dimum.alternative_classes(6, (3,), "random", seed=0)
  mem = dimum.memorization_set(forget, RETAIN, alt, "random", seed=0)
  src = sources(mem)
  np.testing.assert_array_equal(mem.labels, forget.labels)
  assert np.all(src < len(RETAIN)) and len(set(src.tolist())) == 10  # pool 12 >= 10 rows
  assert len(set(RETAIN.labels[src].tolist())) > 1
  np.testing.assert_array_equal(dimum.memorization_set(forget, RETAIN, alt, "random", seed=0).images,
                                mem.images)
  assert not np.array_equal(dimum.memorization_set(forget, RETAIN, alt, "random", seed=1).images, mem.images)


def test_memorization_set_no_repeats_across_classes_sharing_a_pool():
  retain = dataset([5, 5, 5, 5, 5, 5, 0, 1], offset=0)
  forget = dataset([3, 4, 3, 4, 3, 4], offset=200)
  alt = dimum.alternative_classes(6, (3, 4), "next")
  src = sources(dimum.memorization_set(forget, retain, alt, "next", seed=0))
  assert len(set(src.tolist())) == 6


# ----------------------------------------------------------------------------- objectives through objective_loss

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


# ----------------------------------------------------------------------------- SFR-on


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
  step = functools.partial(training.train_step, spec=spec, tx=tx, axis_name=None)

  def direct_grad(params, s, i, name):
    step_rng = jax.random.fold_in(rng, s)
    keys = training.example_keys(jax.random.fold_in(step_rng, i), 3, None)
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


# ----------------------------------------------------------------------------- saliency masks

SCORES = {"a": np.array([0.3, 9.0, -1.0, 4.0]), "b": {"c": np.array([[7.0, 2.0, 0.5], [8.0, 5.0, 6.0]])}}


def test_top_fraction_mask_keeps_the_largest_scores():
  mask = saliency.top_fraction_mask(SCORES, 0.5)
  flat = np.concatenate([SCORES["a"], SCORES["b"]["c"].ravel()])
  kept = np.concatenate([mask["a"], mask["b"]["c"].ravel()])
  np.testing.assert_array_equal(np.sort(flat[kept == 1]), [5.0, 6.0, 7.0, 8.0, 9.0])
  assert mask["b"]["c"].shape == (2, 3)
  assert saliency.kept_fraction(mask) == 0.5


def test_top_fraction_mask_exact_count_with_ties_and_edges():
  ties = {"a": np.ones(4), "b": np.ones((2, 3))}
  mask = saliency.top_fraction_mask(ties, 0.3)
  assert sum(int(np.sum(l)) for l in jax.tree_util.tree_leaves(mask)) == 3
  np.testing.assert_allclose(saliency.kept_fraction(mask), 0.3)
  assert saliency.kept_fraction(saliency.top_fraction_mask(SCORES, 0.0)) == 0.0
  assert saliency.kept_fraction(saliency.top_fraction_mask(SCORES, 1.0)) == 1.0
  with pytest.raises(UserError):
    saliency.top_fraction_mask(SCORES, 1.5)


def test_top_fraction_mask_breaks_ties_by_position():
  mask = saliency.top_fraction_mask({"a": np.ones(1000)}, 0.3)
  np.testing.assert_array_equal(np.flatnonzero(mask["a"]), np.arange(300))


def test_ratio_mask():
  ff = {"a": np.array([1.0, 2.0, 0.0]), "b": np.array([3.0])}
  fr = {"a": np.array([2.0, 2.0, 0.0]), "b": np.array([1.0])}
  mask = saliency.ratio_mask(ff, fr)
  np.testing.assert_array_equal(mask["a"], [0, 1, 1])
  np.testing.assert_array_equal(mask["b"], [1])


def test_accumulate_sums_and_averages_clipped_squares():
  batches = [{"a": jnp.array([2.0, 0.0]), "b": jnp.array([0.0])},   # norm 2 -> scaled to norm 1
             {"a": jnp.array([0.3, 0.0]), "b": jnp.array([0.4])}]   # norm 0.5 -> unchanged
  grad_fn = lambda params, batch: batch
  close(saliency.accumulate(grad_fn, None, batches), {"a": np.array([2.3, 0.0]), "b": np.array([0.4])})
  fisher = saliency.accumulate(grad_fn, None, batches, square=True, clip_norm=1.0)
  close(fisher, {"a": np.array([(1.0 + 0.09) / 2, 0.0]), "b": np.array([0.16 / 2])})
  with pytest.raises(ValueError):
    saliency.accumulate(grad_fn, None, [])


def test_save_and_load_mask_round_trip(tmp_path):
  mask = saliency.top_fraction_mask(SCORES, 0.5)
  path = str(tmp_path / "mask.msgpack")
  saliency.save_mask(path, mask)
  loaded = saliency.load_mask(path)
  assert jax.tree_util.tree_structure(loaded) == jax.tree_util.tree_structure(mask)
  for a, b in zip(jax.tree_util.tree_leaves(loaded), jax.tree_util.tree_leaves(mask)):
    assert a.dtype == jnp.float32
    np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- the method registry


def method_config():
  c = config_lib.base()
  c.training.reduce = "mean"
  c.sgu.update(dict(alpha=0.5, std_power=0.0))
  c.ga = ml_collections.ConfigDict(dict(beta=0.5))
  c.dimum = ml_collections.ConfigDict(dict(beta=2.0))
  c.salun = ml_collections.ConfigDict(dict(beta=0.1, fraction=0.5))
  c.sfron = ml_collections.ConfigDict(dict(alpha_max=6.0))
  return c


EXPECTED = {  # method: ([(name, stream)], mask, alternate)
    "finetune": ([("retain", "retain")], None, False),
    "sgu": ([("retain", "retain"), ("forget", "forget")], None, False),
    "ga": ([("retain", "retain"), ("forget", "forget")], None, False),
    "dimum": ([("retain", "retain"), ("memorize", "alternative")], None, False),
    "salun": ([("forget", "forget"), ("retain", "retain")], "salun", False),
    "sfron": ([("forget", "forget"), ("retain", "retain")], "sfron", True),
}


def test_every_method_is_tested():
  import test_erasing_methods
  assert set(methods.METHODS) == set(EXPECTED) | set(test_erasing_methods.NEW)


@pytest.mark.parametrize("method", sorted(EXPECTED))
def test_build_objectives_and_options(method):
  variant = "obtuse" if method == "sgu" else ""
  alt = dimum.alternative_classes(10, (3,), "next")
  objectives, tx, options = methods.build(method, variant, method_config(), alt=alt, steps=8)
  names, mask, alternate = EXPECTED[method]
  assert [(n, o.stream) for n, o in objectives.items()] == names
  assert options.mask == mask and options.alternate == alternate
  assert (tx is None) == (method == "finetune")
  retain = objectives["retain"]
  assert retain.target is None and retain.reduce is None and retain.cond_drop == 0.0
  assert retain.loss.func is losses.denoising_loss and retain.loss.keywords == {"reduce": "mean"}
  if method == "sgu":
    forget_loss = objectives["forget"].loss   # the retain loss's reduction (config.training.reduce)
    assert forget_loss.func is losses.obtuse_loss and forget_loss.keywords == {"reduce": "mean"}
  if method == "salun":
    assert objectives["forget"].target is not None
  if method == "sfron":
    assert objectives["forget"].reduce is sfron.weighted_ascent


@pytest.mark.parametrize("method,extras,expected", [
    ("sgu", dict(forget_grads=F), lambda g, e: 0.5 * g + 0.5 * e),
    ("ga", dict(forget_grads=F), lambda g, e: 0.5 * g - e),
    ("dimum", dict(memorize_grads=F), lambda g, e: g + 2.0 * e),
    ("salun", dict(retain_grads=F), lambda g, e: g + 0.1 * e),
])
def test_build_transforms_use_the_config(method, extras, expected):
  variant = "orthogonal" if method == "sgu" else ""
  _, tx, _ = methods.build(method, variant, method_config(), alt=np.arange(10), steps=8)
  close(update(tx, U, **extras), combo(expected, U, F))


def test_build_sfron_transform_uses_alpha_max_and_half_the_steps():
  _, tx, _ = methods.build("sfron", "", method_config(), alt=None, steps=8)  # K = 4 iterations
  state = tx.init(U)
  out, state = tx.update(U, state, phase=0, mask=MASK)
  close(out, combo(lambda u, m: 6.0 * u * m, U, MASK))
  _, state = tx.update(U, state, phase=1, mask=MASK)
  _, state = tx.update(U, state, phase=0, mask=MASK)
  _, state = tx.update(U, state, phase=1, mask=MASK)
  out, _ = tx.update(U, state, phase=0, mask=MASK)  # k = 2 = K / 2
  close(out, combo(lambda u, m: 3.0 * u * m, U, MASK))


@pytest.mark.parametrize("method,variant", [("bogus", ""), ("sgu", "bogus")])
def test_build_rejects_unknown_names(method, variant):
  with pytest.raises(UserError):
    methods.build(method, variant, method_config(), alt=None, steps=8)


# ----------------------------------------------------------------------------- baselines' anchors (CORE App. C)


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
  many = training.example_keys(jax.random.key(7), 64, None)
  seen = set(np.asarray(core.draw_anchor(table, jnp.full((64,), 1, jnp.int32), many)).tolist())
  assert seen == {0, 3}


def _anchor_cfg(**kw):
  cfg = config_lib.ddpm_base()
  for k, v in kw.items():
    section, key = k.split("__")
    cfg[section][key] = v
  return cfg


def test_baseline_alternatives_follow_unlearn_anchors():
  alt = dimum.alternative_classes(6, (1, 2), "next")
  same = methods.baseline_alternatives(_anchor_cfg(), alt, (1, 2), 6)
  np.testing.assert_array_equal(same, alt)
  table = methods.baseline_alternatives(_anchor_cfg(unlearn__anchors="random"), alt, (1, 2), 6)
  assert table.shape[0] == 6 and table.ndim == 2
  for c in (1, 2):   # core.anchor_candidates' "random": every class but c itself
    assert set(table[c].tolist()) == set(range(6)) - {c}
  np.testing.assert_array_equal(table[0], 0)
  base = methods.baseline_alternatives(_anchor_cfg(unlearn__anchors="all_to_one", core__base=4), alt, (1, 2), 6)
  assert set(base[1].tolist()) == set(base[2].tolist()) == {4}
  with pytest.raises(UserError, match="config.unlearn.anchors"):
    methods.baseline_alternatives(_anchor_cfg(unlearn__anchors="bijection"), alt, (1, 2), 6)


def test_baseline_alternatives_reach_salun_erasediff_and_ca():
  """The table (not `alt`) is what SalUn's, EraseDiff-rl's and CA-model's targets read: with
  all_to_one onto class 0 a stub eps_theta that encodes the label shows c' = 0, not alt = 3."""
  alt = dimum.alternative_classes(K, (1, 2), "next")          # alt[1] = alt[2] = 3
  cfg = _anchor_cfg(unlearn__anchors="all_to_one", core__base=0, ca__images="forget")
  x_t = noised(KEYS).x_t
  for method in ("salun", "erasediff", "ca"):
    objectives, _, _ = methods.build(method, "", cfg, alt=alt, steps=4, forget=(1, 2), num_classes=K)
    target_fn = objectives["forget"].target
    inputs = training.TargetInputs(lambda p, c: jnp.asarray(eps_np(p, x_t, np.asarray(c))), PARAMS,
                                   noised(KEYS), jnp.asarray(LABELS), {}, KEYS)
    np.testing.assert_allclose(target_fn(inputs), eps_np(PARAMS, x_t, np.zeros(3, np.int32)), rtol=1e-6,
                               err_msg=method)


def test_ca_noise_trains_on_anchor_images_and_ca_model_rejects_mismatched_anchors():
  alt = dimum.alternative_classes(K, (1, 2), "next")
  cfg = _anchor_cfg(ca__images="forget")
  model, _, _ = methods.build("ca", "", cfg, alt=alt, steps=4, forget=(1, 2), num_classes=K)
  noise, _, _ = methods.build("ca", "noise", cfg, alt=alt, steps=4, forget=(1, 2), num_classes=K)
  assert model["forget"].stream == "forget" and noise["forget"].stream == "alternative"
  assert noise["forget"].target is None
  with pytest.raises(UserError, match="config.unlearn.anchors"):
    methods.build("ca", "", _anchor_cfg(unlearn__anchors="random"), alt=alt, steps=4, forget=(1, 2),
                  num_classes=K)
