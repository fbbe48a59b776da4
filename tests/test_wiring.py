"""Wiring between the small pure functions and what a run reports (issue 12, item 8).

Each test fails when one seam is broken: a config option that does not reach its
method (asymmetric values: 0.3 vs 0.7, never 0.5), a data stream that is the wrong
set or ignores the step, the forward process / posterior of the DDPM path, labels and
guidance in the evaluate stage's sampler, the NLL's offset (its dequantization is tested
in tests/evaluation/test_nll.py), and 1 vs 2 devices.  Models are stubs (a linear
per-class map, or the exact eps of one point per class) so every expected value is a
hand computation.
"""
import dataclasses
import importlib.util
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unlearn_jax import config_lib, data as data_lib, losses, pipeline, training
from unlearn_jax import sde as sde_lib
from unlearn_jax import train_state as ts
from unlearn_jax.unlearning import dimum, methods
from unlearn_jax import experiment as exp_lib
from unlearn_jax import generation
from unlearn_jax.stages import train as train_stage
from unlearn_jax.stages import mask as mask_stage
from unlearn_jax import settings
from test_dimum_pipeline import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
tree_map = jax.tree_util.tree_map
leaves = jax.tree_util.tree_leaves


def close(a, b, rtol=1e-5, atol=1e-6):
  for x, y in zip(leaves(a), leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def max_diff(a, b) -> float:
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(leaves(a), leaves(b)))


# ============================================================================ stubs


def linear_apply(variables, x, time, labels=None, train=False, rngs=None):
  """eps = x w[c] + b[c] + s time: a per-class linear map (label K is the null class)."""
  del train, rngs
  p = variables["params"]
  c = jnp.zeros((x.shape[0],), jnp.int32) if labels is None else labels
  e = (-1,) + (1,) * (x.ndim - 1)
  return x * p["w"][c].reshape(e) + p["b"][c].reshape(e) + p["s"] * time.reshape(e)


class LinearModule:
  """A module stand-in for `Experiment.module` (pipeline stages call `.apply`)."""
  apply = staticmethod(linear_apply)


def linear_params(num_classes):
  r = np.random.default_rng(0)
  return {"w": jnp.asarray(r.uniform(0.5, 1.5, num_classes + 1), jnp.float32),
          "b": jnp.asarray(r.normal(size=num_classes + 1), jnp.float32),
          "s": jnp.asarray(0.3, jnp.float32)}


# ============================================================================ 1. config -> method

K = 4                                    # classes 0..3, the null class is 4
FORGET = (1, 2)
ALT = dimum.alternative_classes(K, FORGET, "next")          # 1 -> 3, 2 -> 3
PROCESS = sde_lib.DDPMSchedule(N=20, beta_start=0.01, beta_end=0.3)   # std(t) from 0.1 to ~1
PARAMS = linear_params(K)
FROZEN = tree_map(lambda p: p + 0.25, PARAMS)               # theta* != theta, so EWC/frozen targets act
MASK = {"w": jnp.array([1.0, 0.0, 1.0, 1.0, 0.0]), "b": jnp.array([0.0, 1.0, 1.0, 0.0, 1.0]),
        "s": jnp.array(1.0)}
FISHER = {"w": jnp.array([0.5, 2.0, 1.0, 3.0, 0.2]), "b": jnp.array([1.0, 0.1, 2.0, 0.4, 1.5]),
          "s": jnp.array(0.7)}
RNG = jax.random.key(7)


def _images(seed, n=6):
  return np.random.default_rng(seed).uniform(0, 1, (n, 2, 2, 1)).astype(np.float32)


BATCHES = {  # every stream a method may read, each distinct
    "forget": {"x": _images(1), "labels": np.array([1, 2, 1, 2, 1, 2], np.int32)},
    "retain": {"x": _images(2), "labels": np.array([0, 3, 0, 3, 3, 0], np.int32)},
    "alternative": {"x": _images(3), "labels": np.array([1, 2, 1, 2, 1, 2], np.int32)},
    "all": {"x": _images(4), "labels": np.array([0, 1, 2, 3, 2, 1], np.int32)},
}


def method_config(**overrides):
  """ddpm_base() (ESD's partial DDIM within the stub's N = 20) with `overrides` {"section.key": value}."""
  c = config_lib.ddpm_base()
  c.esd.ddim_steps = 4
  for path, value in overrides.items():
    section, key = path.split(".")
    c[section][key] = value
  return c


def _spec(objectives, options):
  return training.StepSpec(apply_fn=linear_apply, process=PROCESS, output_type="eps", objectives=objectives,
                           weighting="simple", ema_rate=0.0, conditional=True, null_label=K,
                           alternate=options.alternate)


def _consts(options):
  """`train_stage.method_consts` of the mask the method's kind reads (FISHER / MASK)."""
  mask = FISHER if options.mask == "fisher" else MASK if options.mask in ("salun", "sfron") else None
  return train_stage.method_consts(options, mask, FROZEN)[0]


def method_parts(method, variant="", **overrides):
  """(state, spec, optimizer, consts, options) of `method` built by `methods.build` from the
  config, under plain SGD at rate 1 without clipping (so theta_0 - theta_1 is the method's
  combined gradient), with the consts its options ask for (as `train_stage.run`)."""
  cfg = method_config(**overrides)
  objectives, tx, options = methods.build(method, variant, settings.of(cfg), alt=ALT, steps=4, forget=FORGET, num_classes=K)
  consts = _consts(options)
  spec = _spec(objectives, options)
  opt = training.make_optimizer(1.0, warmup=0, grad_clip=0.0, method=train_stage.with_mask(tx, options, consts),
                                name="sgd")
  return ts.create(PARAMS, opt), spec, opt, consts, options


def method_step(method, variant="", **overrides):
  """(update, per-objective gradients, options) of one `training.train_step` (`method_parts`)."""
  state, spec, opt, consts, options = method_parts(method, variant, **overrides)
  objectives = spec.objectives
  # Eager (not jitted): op-by-op dispatch reuses its compiled ops across the table's ~70
  # builds, where a jit would compile each closure anew (~1.5 s each on 2 cores).
  new, _ = training.train_step(state, BATCHES, RNG, consts, spec=spec, tx=opt)
  update = tree_map(jnp.subtract, PARAMS, new.params)
  step_rng = jax.random.fold_in(RNG, 0)     # the step's keys, as train_step derives them at step 0
  grads = Lazy(lambda: {n: training._objective_grad(state, BATCHES, step_rng, step_rng, i, n, spec, consts)[1]
                        for i, n in enumerate(objectives)})
  return update, grads, options


class Lazy(dict):
  """A dict filled by `fill()` on first access (the per-objective gradients cost a pass each)."""

  def __init__(self, fill):
    super().__init__()
    self._fill = fill

  def _ensure(self):
    if self._fill is not None:
      self.update(self._fill())
      self._fill = None

  def __getitem__(self, k):
    self._ensure()
    return super().__getitem__(k)

  def __iter__(self):
    self._ensure()
    return super().__iter__()


# (method, variant, field, a, b, hand): `hand(grads, value)` -> the expected update (or None:
# the two updates must differ only).  `base` overrides apply to both values.
def _lin(fn):
  return lambda g, v: tree_map(lambda *xs: fn(v, *xs), *[g[k] for k in sorted(g)])


def _sgu_obtuse_hand(field, alpha=0.3):
  """alpha g_r + (1 - alpha) grad mean_b [w_b mean_d(eps_hat z)] (Eq. 10, 11) with w = std^-p
  zeroed where std > max_std, from the forget batch noised as train_step does (objective 1)."""
  def hand(g, v):
    p, max_std = (v, 0.0) if field == "sgu.std_power" else (0.0, v)
    b = BATCHES["forget"]
    keys = training.example_keys(jax.random.fold_in(jax.random.fold_in(RNG, 0), 1), len(b["labels"]))
    n = training.perturb_examples(PROCESS, jnp.asarray(b["x"]), keys, "simple")
    w = n.std ** -p * (1.0 if not max_std else (n.std <= max_std))
    loss = lambda q: jnp.mean(w * jnp.mean((linear_apply({"params": q}, n.x_t, n.time_input, b["labels"])
                                            * n.noise).reshape(len(w), -1), -1))
    return tree_map(lambda r, f: alpha * r + (1 - alpha) * f, g["retain"], jax.grad(loss)(PARAMS))
  return hand


OPTION_CASES = [
    # SGU Eq. 11: alpha g_r + (1 - alpha) g_f (objectives: forget, retain in sorted order)
    ("sgu", "obtuse", "sgu.alpha", 0.3, 0.7, {}, _lin(lambda v, f, r: v * r + (1 - v) * f)),
    ("sgu", "obtuse", "sgu.std_power", 0.6, -0.6, {"sgu.alpha": 0.3}, _sgu_obtuse_hand("sgu.std_power")),
    ("sgu", "obtuse", "sgu.max_std", 0.4, 0.9, {"sgu.alpha": 0.3}, _sgu_obtuse_hand("sgu.max_std")),
    ("sgu", "orthogonal", "sgu.orthogonal_form", "elementwise", "inner", {}, None),
    # DiMUM Eq. 5: beta g_r - g_f
    ("ga", "", "ga.beta", 0.3, 0.7, {}, _lin(lambda v, f, r: v * r - f)),
    # DiMUM Eq. 11: g_r + beta g_u'
    ("dimum", "", "dimum.beta", 0.3, 0.7, {}, _lin(lambda v, m, r: r + v * m)),
    # DiMUM Eq. 6: (g_f + beta g_r) * mask
    ("salun", "", "salun.beta", 0.3, 0.7, {}, None),          # hand value: test_masked_and_...
    # SFR-on's forget step (step 0): alpha_max g_f * mask
    ("sfron", "", "sfron.alpha_max", 3.0, 7.0, {}, None),
    ("erasediff", "", "erasediff.eta", 0.3, 0.7, {}, None),
    ("erasediff", "", "erasediff.rule", "paper", "cosine", {}, None),
    ("erasediff", "", "erasediff.lam", 0.3, 0.7, {"erasediff.rule": "constant"}, None),
    ("erasediff", "", "erasediff.inner_steps", 1, 3, {}, None),
    ("erasediff", "", "erasediff.inner_lr", 0.3, 0.7, {}, None),
    ("erasediff", "", "erasediff.grad_form", "first_order", "unrolled", {}, None),
    ("erasediff", "", "erasediff.target", "rl", "noise", {}, None),
    # CORE Eq. 4: g_f + alpha g_r
    ("core", "", "core.alpha", 0.3, 0.7, {}, _lin(lambda v, f, r: f + v * r)),
    ("core", "", "core.scheme", "one_to_one", "all_to_one", {}, None),
    ("core", "", "core.group_size", 1, 2, {"core.scheme": "groups_to_one"}, None),
    ("core", "", "core.k", 1, 2, {"core.scheme": "random_k"}, None),   # 2 retained classes
    ("core", "", "core.base", 0, 3, {"core.scheme": "all_to_one"}, None),
    ("esd", "", "esd.eta", 0.3, 0.7, {}, None),
    ("esd", "", "esd.base", -1, 0, {}, None),
    ("esd", "", "esd.ddim_steps", 2, 5, {}, None),
    ("esd", "", "esd.guidance", 0.3, 3.0, {}, None),
    ("esd", "", "esd.source", "current", "frozen", {}, None),
    ("ca", "", "ca.variant", "model", "noise", {}, None),
    ("ca", "", "ca.images", "anchor", "forget", {}, None),
    # CA Eq. 11-12: g_abl + lambda g_prior
    ("ca", "", "ca.prior_weight", 0.3, 0.7, {}, _lin(lambda v, f, r: f + v * r)),
    # SA: g_f + gamma g_rep + 2 lam F (theta - theta*)
    ("sa", "", "sa.gamma", 0.3, 0.7, {}, None),
    ("sa", "", "sa.lam", 0.3, 0.7, {}, None),
    ("sa", "", "sa.replay", "retain", "all", {}, None),
    # Scissorhands: g_r - gamma g_f
    ("shs", "", "shs.gamma", 0.3, 0.7, {}, _lin(lambda v, f, r: r - v * f)),
]
#: options read outside the unlearning step, each tested elsewhere (name: where).
OPTIONS_ELSEWHERE = {
    "salun.fraction": "test_mask_stage_options_reach_the_mask",
    "shs.sparsity": "test_mask_stage_options_reach_the_mask",
    "sa.fisher_samples": "test_mask_stage_options_reach_the_mask",
    "sa.fisher_t": "test_mask_stage_options_reach_the_mask",
    "erasediff.couple_lr": "test_erasediff_couple_lr_sets_the_options_lr (and tests/unlearning/test_erasediff.py "
                           "through the pipeline)",
    "erasediff.unroll": "tests/unlearning/test_erasediff.py::test_erasediff_rolled_inner_loop_is_the_same_update "
                        "(rolled or not, the same update by design)",
    **{f"uce.{k}": "tests/unlearning/test_all_methods.py::test_closed_form_method_builds_nothing_and_edits_by_hand "
                   "(each choice by hand; UCE is an edit, not a step)" for k in ("target", "tokens", "preserve")},
}


def _case_id(case):
  return f"{case[2]}={case[3]}|{case[4]}"


def _hand_covered():
  """The options tests/unlearning/test_all_methods.py's HAND table follows at a second value
  (`test_a_hand_option_reaches_the_transform`)."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "unlearning", "test_all_methods.py")
  spec = importlib.util.spec_from_file_location("_all_methods", path)
  sys.path.insert(0, os.path.dirname(path))
  try:
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
  finally:
    sys.path.remove(os.path.dirname(path))
  return {f"{m}.{k}" for m, k in mod.hand_covered_fields()}


def test_every_method_option_has_a_wiring_case():
  """Every config.<method>.* of base() (methods.METHODS) is in OPTION_CASES, OPTIONS_ELSEWHERE, or
  followed by the HAND table of tests/unlearning/test_all_methods.py at a second value."""
  base = config_lib.base()
  fields = {f"{m}.{k}" for m in methods.METHODS if m in base for k in base[m]}
  hand = _hand_covered()
  covered = {c[2] for c in OPTION_CASES} | set(OPTIONS_ELSEWHERE) | hand
  assert fields - covered == set(), f"options without a wiring test: {sorted(fields - covered)}"
  assert covered - fields == set()
  assert {c[0] for c in OPTION_CASES} | {"finetune", "neggrad"} | {f.split(".")[0] for f in hand} \
      == set(methods.METHODS)


@pytest.mark.parametrize("case", OPTION_CASES, ids=_case_id)
def test_method_option_reaches_the_update(case):
  method, variant, field, a, b, base, hand = case
  ua, ga, _ = method_step(method, variant, **base, **{field: a})
  ub, gb, _ = method_step(method, variant, **base, **{field: b})
  assert max_diff(ua, ub) > 1e-4, f"{field}: {a} and {b} give the same update"
  if hand is not None:
    for u, g, v in ((ua, ga, a), (ub, gb, b)):
      close(u, hand(g, v))


def test_option_free_methods_hand_values():
  u, g, _ = method_step("finetune")
  close(u, g["retain"])
  u, g, _ = method_step("neggrad")
  close(u, tree_map(jnp.negative, g["forget"]))


def test_masked_and_alternating_methods_hand_values():
  # SalUn: (g_f + beta g_r) * mask (the mask const reaches the transform).
  u, g, options = method_step("salun", **{"salun.beta": 0.3})
  assert options.mask == "salun"
  close(u, tree_map(lambda f, r, m: (f + 0.3 * r) * m, g["forget"], g["retain"], MASK))
  # SFR-on step 0 is the forget step: alpha_max g_f * mask (alpha_0 = alpha_max).
  u, g, options = method_step("sfron", **{"sfron.alpha_max": 3.0})
  assert options.alternate
  close(u, tree_map(lambda f, m: 3.0 * f * m, g["forget"], MASK))
  # Selective Amnesia: g_f + gamma g_rep + 2 lam F (theta - theta*) (fisher and frozen consts).
  u, g, options = method_step("sa", **{"sa.gamma": 0.3, "sa.lam": 0.7})
  assert options.frozen and options.mask == "fisher"
  close(u, tree_map(lambda f, r, fi, p, p0: f + 0.3 * r + 2 * 0.7 * fi * (p - p0),
                    g["forget"], g["replay"], FISHER, PARAMS, FROZEN))


def test_erasediff_couple_lr_sets_the_options_lr():
  cfg = lambda couple: method_config(**{"erasediff.couple_lr": couple, "erasediff.eta": 0.3})
  assert methods.build("erasediff", "", settings.of(cfg(True)), alt=ALT, steps=1, forget=FORGET, num_classes=K)[2].lr == 0.3
  assert methods.build("erasediff", "", settings.of(cfg(False)), alt=ALT, steps=1, forget=FORGET, num_classes=K)[2].lr is None


# ---------------------------------------------------------------------------- mask-stage options


@pytest.fixture(scope="module")
def digits_exp():
  """The tiny 8x8-digits DDPM experiment of test_dimum_pipeline (forget 3; nothing trained)."""
  return pipeline.build_experiment(tiny_config())


def stub_exp(exp, module, **config_overrides):
  """`exp` with its model replaced by `module` and config fields {"a.b": v} set (fresh caches)."""
  cfg = exp.config
  for path, value in config_overrides.items():
    cfg = settings.replace(cfg, path, value)
  return dataclasses.replace(exp, config=cfg, module=module, compiled={})


def _mask_stage(exp, method, tmp_path, monkeypatch, params):
  from unlearn_jax.unlearning import saliency
  monkeypatch.setattr(mask_stage, "source_params", lambda exp, workdir, init: params)
  st = config_lib.stage("mask", method=method, init="pretrained", steps=2)
  name = f"mask_{method}_{len(os.listdir(tmp_path))}"
  mask_stage.run(exp, name, st, str(tmp_path))
  return saliency.load_mask(os.path.join(tmp_path, name, train_stage.MASK_FILE))


def _kept(mask):
  return {k: np.flatnonzero(np.asarray(v)).tolist() for k, v in mask.items()}


def test_mask_stage_options_reach_the_mask(digits_exp, tmp_path, monkeypatch):
  """salun.fraction / shs.sparsity: the mask keeps round(f P) of the P = 23 stub weights, and the
  kept ones are those the forget loss moves (class 3's w and b, and the shared s: only D_f's
  gradients score them).  sa.fisher_samples / fisher_t reach `sample_fisher`."""
  from unlearn_jax.unlearning import selective_amnesia as sa_lib
  params = linear_params(10)
  forget = {"w": [3], "b": [3], "s": [0]}
  for fraction in (3 / 23, 0.7):
    mask = _mask_stage(stub_exp(digits_exp, LinearModule(), **{"salun.fraction": fraction}), "salun", tmp_path,
                       monkeypatch, params)
    assert sum(int(np.sum(m)) for m in leaves(mask)) == round(fraction * 23)
    kept = _kept(mask)
    assert all(set(forget[k]) <= set(kept[k]) for k in forget), kept
  mask = _mask_stage(stub_exp(digits_exp, LinearModule(), **{"salun.fraction": 3 / 23}), "salun", tmp_path,
                     monkeypatch, params)
  assert _kept(mask) == forget
  for sparsity in (1 - 3 / 23, 0.3):   # the reset mask is the top 1 - sparsity of SNIP scores
    mask = _mask_stage(stub_exp(digits_exp, LinearModule(), **{"shs.sparsity": sparsity}), "shs", tmp_path,
                       monkeypatch, params)
    assert sum(int(np.sum(m)) for m in leaves(mask)) == round((1 - sparsity) * 23)
    assert all(set(forget[k]) <= set(_kept(mask)[k]) for k in forget)
  calls = []
  real = sa_lib.sample_fisher

  def spy(params, x, labels, key, **kw):
    calls.append((x.shape[0], kw["draws"], np.asarray(labels).tolist()))
    return real(params, x, labels, key, **kw)

  monkeypatch.setattr(sa_lib, "sample_fisher", spy)
  fishers = [_mask_stage(stub_exp(digits_exp, LinearModule(), **{"sa.fisher_samples": n, "sa.fisher_t": m}),
                         "fisher", tmp_path, monkeypatch, params) for n, m in ((3, 2), (2, 3))]
  assert calls == [(3, 2, [0, 1, 2]), (2, 3, [0, 1])]
  assert max_diff(*fishers) > 1e-6


# ============================================================================ 2. data wiring


def test_alternative_set_holds_retain_images_of_the_alternative_class(digits_exp):
  """DiMUM's D_u' / CA's anchor images: the forget conditions paired with retain images of
  alt[c] (`config.unlearn.alternative`; map:3=5, not the default next class 4)."""
  for scheme, alt_class in (("map:3=5", 5), ("next", 4)):
    cfg = tiny_config()
    cfg.unlearn.alternative = scheme
    exp = pipeline.build_experiment(cfg)
    assert exp.alt[3] == alt_class and [int(exp.alt[c]) for c in range(10) if c != 3] == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    d_u = exp.streams["alternative"]
    assert len(d_u) == len(exp.streams["forget"]) > 0
    np.testing.assert_array_equal(d_u.labels, 3)
    retain = exp.streams["retain"]
    pool = {retain.images[i].tobytes() for i in np.flatnonzero(retain.labels == alt_class)}
    other = {retain.images[i].tobytes() for i in np.flatnonzero(retain.labels != alt_class)}
    got = [x.tobytes() for x in d_u.images]
    assert all(g in pool for g in got) and not any(g in other for g in got)
    assert len(set(got)) == min(len(got), len(pool))       # drawn without replacement while possible
    # SalUn's / CA-model's / EraseDiff-rl's c': the target is the model under exp.alt[c].
    inputs = training.TargetInputs(eps=lambda p, lab: lab, params=None, noised=None,
                                   labels=jnp.array([3, 3, 0]), consts={}, keys=None)
    for method in ("salun", "ca", "erasediff"):
      st = config_lib.stage("unlearn", method=method, init="pretrained", steps=1)
      objectives, _, _ = train_stage.objectives(exp, st)
      np.testing.assert_array_equal(objectives["forget"].target(inputs), [alt_class, alt_class, 0])
    st = config_lib.stage("unlearn", method="dimum", init="pretrained", steps=1)
    assert train_stage.objectives(exp, st)[0]["memorize"].stream == "alternative"


def test_pipeline_batch_at_step_s_is_batch_at_step_of_its_stream(digits_exp, tmp_path, monkeypatch):
  """run_model_stage hands the loop get_batches(s) = {stream: batch_at_step(stream, s, B, seed_k)}
  for the objectives' streams at the stage's batch size, different at every step."""
  captured = {}

  def fake_loop(stage_dir, state, step_fn, loop, get_batches, **kw):
    captured.update(loop=loop, get_batches=get_batches)
    return state

  monkeypatch.setattr(training, "train_loop", fake_loop)
  monkeypatch.setattr(train_stage, "init_state", lambda *a, **k: None)
  exp = stub_exp(digits_exp, LinearModule())
  st = config_lib.stage("unlearn", method="dimum", init="pretrained", steps=3, batch_size=6)
  train_stage.run(exp, "dimum", st, str(tmp_path))
  loop, get = captured["loop"], captured["get_batches"]
  assert loop.batch_size == 6 and loop.num_steps == 3
  seed = exp_lib.stage_seed(exp.config, "dimum")
  assert loop.seed == seed
  for s in (0, 1, 7):
    b = get(s)
    assert sorted(b) == ["alternative", "retain"]
    for i, k in enumerate(sorted(b)):
      want = data_lib.batch_at_step(exp.streams[k], s, 6, seed + i)
      np.testing.assert_array_equal(b[k]["x"], want["x"])
      np.testing.assert_array_equal(b[k]["labels"], want["labels"])
    assert not np.isin(b["retain"]["labels"], 3).any()
    np.testing.assert_array_equal(b["alternative"]["labels"], 3)
  assert not np.array_equal(get(0)["retain"]["x"], get(1)["retain"]["x"])
  assert not np.array_equal(get(0)["alternative"]["x"], get(1)["alternative"]["x"])
  np.testing.assert_array_equal(get(4)["retain"]["x"], get(4)["retain"]["x"])   # pure in the step


def test_train_loop_feeds_step_s_the_batch_of_step_s(tmp_path):
  """train_loop runs step s on get_batches(s) (also after a resume): each step logs the sum
  of its batch, and the history matches batch_at_step(ds, s, ...) step by step."""
  ds = data_lib.Dataset(name="t", images=np.arange(40, dtype=np.float32).reshape(20, 2), labels=np.zeros(20, np.int32),
                        num_classes=1, class_names=("0",), source="t", is_image=False)
  get = lambda s: {"all": data_lib.batch_at_step(ds, s, 4, 3)}

  def step_fn(state, batches, rng, consts):
    total = jnp.sum(batches["all"]["x"])
    return state.replace(step=state.step + 1), {"xsum": total, "finite": jnp.float32(1.0)}

  state = ts.create({"p": jnp.zeros(2)}, training.make_optimizer(1.0))
  loop = training.LoopConfig(num_steps=3, batch_size=4, seed=0, log_every=1, ckpt_every=3)
  training.train_loop(str(tmp_path), state, step_fn, loop, get)
  loop.num_steps = 5                    # resume at step 3
  training.train_loop(str(tmp_path), state, step_fn, loop, get)
  history = training.read_history(str(tmp_path))
  assert [r["step"] for r in history] == [1, 2, 3, 4, 5]
  want = [float(get(s)["all"]["x"].sum()) for s in range(5)]
  np.testing.assert_allclose([r["xsum"] for r in history], want)
  assert len(set(want)) == 5


def test_ddpm_forward_process_is_sqrt_abar_x0_plus_sqrt_1_minus_abar_z():
  """q(x_i | x_0) of the DDPM path (losses.perturb and the train step's objective_inputs, with
  the [-1, 1] scaler), against numpy from the betas."""
  process = sde_lib.get_sde("ddpm", **tiny_config().sde.to_dict())
  abar = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000))
  x01 = np.random.default_rng(0).uniform(0, 1, (5, 8, 8, 1)).astype(np.float32)
  i = np.array([0, 1, 499, 998, 999])
  n = losses.perturb(process, jnp.asarray(x01), jax.random.key(0), "simple", t=jnp.asarray(i))
  a, s = np.sqrt(abar[i])[:, None, None, None], np.sqrt(1 - abar[i])[:, None, None, None]
  np.testing.assert_allclose(n.x_t, a * x01 + s * np.asarray(n.noise), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(n.std, np.sqrt(1 - abar[i]), rtol=2e-4)     # 1 - abar_0 = 1e-4 in float32
  np.testing.assert_allclose(n.time_input, i / 1000.0)
  assert abs(float(np.std(n.noise)) - 1.0) < 0.1 and abs(float(np.mean(n.noise))) < 0.25   # 320 draws of N(0, 1)
  # The train step's inputs: the scaled batch (2 x - 1), one (i, z) per example.
  obj = training.Objective("retain", losses.denoising_loss)
  spec = training.StepSpec(apply_fn=linear_apply, process=process, output_type="eps", objectives={"retain": obj},
                           weighting="simple", centered=True, conditional=True, null_label=10)
  keys = training.example_keys(jax.random.key(1), 5)
  noised, _, target, _ = training.objective_inputs(linear_params(10), {"x": x01, "labels": np.arange(5)}, keys,
                                                   spec, obj)
  i = np.asarray(noised.t)
  a, s = np.sqrt(abar[i])[:, None, None, None], np.sqrt(1 - abar[i])[:, None, None, None]
  np.testing.assert_allclose(noised.x_t, a * (2 * x01 - 1) + s * np.asarray(target), rtol=1e-5, atol=1e-5)
  assert len(set(i.tolist())) > 1


def test_ddpm_posterior_is_ho_et_al_eq7():
  process = sde_lib.get_sde("ddpm", **tiny_config().sde.to_dict())
  betas = np.linspace(1e-4, 0.02, 1000)
  abar = np.cumprod(1 - betas)
  r = np.random.default_rng(1)
  x_i, x0 = r.normal(size=(4, 3)).astype(np.float32), r.normal(size=(4, 3)).astype(np.float32)
  i = np.array([0, 1, 500, 999])
  mean, var = process.posterior(jnp.asarray(x_i), jnp.asarray(x0), jnp.asarray(i))
  prev = np.where(i > 0, abar[np.maximum(i - 1, 0)], 1.0)
  c0 = np.sqrt(prev) * betas[i] / (1 - abar[i])                      # Eq. 7's coefficient of x_0
  ci = np.sqrt(1 - betas[i]) * (1 - prev) / (1 - abar[i])            # ... and of x_t
  np.testing.assert_allclose(mean, c0[:, None] * x0 + ci[:, None] * x_i, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(var, (1 - prev) / (1 - abar[i]) * betas[i], rtol=1e-4, atol=1e-12)
  np.testing.assert_allclose(mean[0], x0[0], rtol=1e-5)            # i = 0: the mean is x_0, var 0


# ============================================================================ 3. evaluate stage


class PointMassModule:
  """eps(x_i, i, c) = (x_i - sqrt(abar_i) m_c) / sqrt(1 - abar_i): the exact noise predictor of
  data concentrated at m_c (params["m"][c]), so every DDPM sampler ends exactly at x_0 = m_c,
  and with guidance w at (1 + w) m_c - w m_null, whatever its noise."""

  def __init__(self, process):
    self.process = process

  def apply(self, variables, x, time, labels=None, train=False, rngs=None):
    i = jnp.round(time * self.process.N).astype(jnp.int32)
    a, s = self.process.marginal_coeffs(i)
    e = (-1,) + (1,) * (x.ndim - 1)
    return (x - a.reshape(e) * variables["params"]["m"][labels].reshape(e)) / s.reshape(e)


#: m_c for the 10 digits and the null class (10): distinct, and guided values inside [-1, 1].
POINTS = {"m": jnp.asarray(np.append(0.05 * np.arange(10) - 0.2, 0.3), jnp.float32)}
LABELS = np.array([0, 7, 3, 9, 2], np.int32)


def expected_samples(labels, w, m=np.asarray(POINTS["m"]), null=10):
  """[0, 1] images of guided point masses: ((1 + w) m_c - w m_null + 1) / 2 everywhere."""
  v = (1 + w) * m[labels] - w * m[null]
  return np.broadcast_to(((v + 1) / 2)[:, None, None, None], (len(labels), 8, 8, 1))


def point_mass_samples(exp, kind, w, labels=LABELS):
  e = stub_exp(exp, PointMassModule(exp.process), **{"eval.sampler.kind": kind, "eval.sampler.guidance": w})
  return generation.generate(e, POINTS, len(labels), jax.random.key(3), batch_size=4, labels=labels)


@pytest.mark.parametrize("kind", ["ddim", "ancestral"])
@pytest.mark.parametrize("w", [0.7, 0.0])
def test_generate_routes_labels_and_applies_guidance(digits_exp, kind, w):
  """generate(labels) through the experiment's sampler: sample b ends at the guided point of
  labels[b] (5 samples in batches of 4: the padding and the batch order keep the routing)."""
  x = point_mass_samples(digits_exp, kind, w)
  np.testing.assert_allclose(x, expected_samples(LABELS, w), atol=2e-4)
  wrong = {"the null label for the label": np.full_like(LABELS, 10), "labels reversed": LABELS[::-1],
           "labels ignored (0)": np.zeros_like(LABELS)}
  for why, lab in wrong.items():                 # each would be told apart
    assert np.max(np.abs(x - expected_samples(lab, w))) > 0.02, why
  if w:
    assert np.max(np.abs(x - expected_samples(LABELS, 0.0))) > 0.02    # unguided would fail
    assert np.max(np.abs(x - expected_samples(LABELS, 1 - w))) > 0.02   # w for 1 - w would fail


def test_nll_offset_per_convention_and_centering(digits_exp, monkeypatch):
  """generation.nll_offset: score_sde's 7 - inverse_scaler(-1) (7 centred, 8 not, for any data);
  "density": 8 bits for 8-bit dequantized images + log2 |d inverse_scaler / dx| (-1 centred),
  toy data without the 8.  The offset and the estimator reach the likelihood function."""
  from unlearn_jax import likelihood
  toy = dataclasses.replace(digits_exp.train, is_image=False)
  expected = {("score_sde", True, True): 7.0, ("score_sde", False, True): 8.0,
              ("score_sde", True, False): 7.0, ("score_sde", False, False): 8.0,
              ("density", True, True): 7.0, ("density", False, True): 8.0,
              ("density", True, False): -1.0, ("density", False, False): 0.0}
  seen = []
  monkeypatch.setattr(likelihood, "get_likelihood_fn", lambda *a, **kw: seen.append(kw) or (lambda *b: None))
  for (conv, centered, image), want in expected.items():
    exp = stub_exp(digits_exp, LinearModule(), **{"eval.nll.offset": conv, "data.centered": centered})
    exp.config = dataclasses.replace(exp.config, sde=settings.SDE())                 # an SDE experiment (the DDPM path has no NLL)
    exp = dataclasses.replace(exp, process=sde_lib.VPSDE())
    if not image:
      exp = dataclasses.replace(exp, train=toy)
    assert generation.nll_offset(exp) == want, (conv, centered, image)
    generation.nll_function(exp)
    assert seen[-1]["offset"] == want
    assert seen[-1]["hutchinson"] == (exp.config.eval.nll.hutchinson if image else "exact")


