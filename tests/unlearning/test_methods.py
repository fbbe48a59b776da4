"""methods: the table of specs: what build() returns per method, variants, the baselines' c'."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unlearn_jax import losses, training
from unlearn_jax.errors import UserError
from unlearn_jax.unlearning import core, dimum, methods, sfron
from unlearn_jax.stages import train as train_stage
from unlearn_jax import settings
from method_fixtures import (F, G, K, KEYS, LABELS, MASK, PARAMS, R, U, anchor_cfg, close, combo, eps_np, method_config,
                             noised, update)


EXPECTED = {  # method: ([(name, stream)], mask, alternate)
    "finetune": ([("retain", "retain")], None, False),
    "sgu": ([("retain", "retain"), ("forget", "forget")], None, False),
    "ga": ([("retain", "retain"), ("forget", "forget")], None, False),
    "dimum": ([("retain", "retain"), ("memorize", "alternative")], None, False),
    "salun": ([("forget", "forget"), ("retain", "retain")], "salun", False),
    "sfron": ([("forget", "forget"), ("retain", "retain")], "sfron", True),
}


NEW = {  # method: ([(objective, stream)], Options)
    "neggrad": ([("forget", "forget")], methods.Options()),
    "erasediff": ([("retain", "retain"), ("forget", "forget")], methods.Options()),
    "core": ([("forget", "forget"), ("retain", "retain")], methods.Options(frozen=True)),
    "esd": ([("forget", "forget")], methods.Options(frozen=True)),
    "ca": ([("forget", "alternative"), ("retain", "retain")], methods.Options()),
    "sa": ([("forget", "forget"), ("replay", "retain")], methods.Options(mask="fisher", frozen=True)),
    "shs": ([("retain", "retain"), ("forget", "forget")], methods.Options(mask="shs", reset=True)),
}


def test_the_tabled_methods_exist():
  """(Every method's row is forced by test_all_methods.py's HAND table; these are its older,
  per-objective checks of the methods before the redesign.)"""
  assert set(EXPECTED) | set(NEW) <= set(methods.METHODS)


@pytest.mark.parametrize("method", sorted(EXPECTED))
def test_build_objectives_and_options(method):
  variant = "obtuse" if method == "sgu" else ""
  alt = dimum.alternative_classes(10, (3,), "next")
  objectives, tx, options = methods.build(method, variant, settings.of(method_config()), alt=alt, steps=8)
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
  _, tx, _ = methods.build(method, variant, settings.of(method_config()), alt=np.arange(10), steps=8)
  close(update(tx, U, **extras), combo(expected, U, F))


@pytest.mark.parametrize("method,variant", [("bogus", ""), ("sgu", "bogus")])
def test_build_rejects_unknown_names(method, variant):
  with pytest.raises(UserError):
    methods.build(method, variant, settings.of(method_config()), alt=None, steps=8)


@pytest.mark.parametrize("method", sorted(NEW))
def test_build_new_methods(method):
  objectives, tx, options = methods.build(method, "", settings.of(method_config()), alt=np.arange(10), steps=4,
                                          forget=(3,), num_classes=10)
  names, want = NEW[method]
  assert [(n, o.stream) for n, o in objectives.items()] == names
  assert options == want
  assert (tx is None) == (method == "esd")


def test_build_variants_override_the_config_for_one_stage():
  cfg = method_config()
  cfg.lock()
  objectives, _, options = methods.build("erasediff", "core", settings.of(cfg), alt=np.arange(10), steps=4, forget=(3,),
                                         num_classes=10)
  assert options.frozen and objectives["retain"].target is core.frozen_target
  assert objectives["forget"].value_fn is not None
  assert cfg.erasediff.target == "rl"               # the config itself is unchanged
  with pytest.raises(UserError, match="config.core.scheme"):
    methods.build("core", "bogus", settings.of(cfg), alt=np.arange(10), steps=4, forget=(3,), num_classes=10)
  with pytest.raises(UserError, match="config.esd.base"):
    cfg2 = method_config()
    cfg2.esd.base = 3
    methods.build("esd", "", settings.of(cfg2), alt=np.arange(10), steps=4, forget=(3,), num_classes=10)


def test_a_salun_mask_composes_with_core():
  _, tx, options = methods.build("core", "", settings.of(method_config()), alt=np.arange(10), steps=4, forget=(3,),
                                 num_classes=10)
  composed = train_stage.with_mask(tx, options, {"mask": MASK})
  out, _ = composed.update(R, composed.init(R), None, retain_grads=G, mask=MASK)
  close(out, jax.tree_util.tree_map(lambda a, b, m: (a + 2.0 * b) * m, R, G, MASK))
  assert train_stage.with_mask(tx, options, {}) is tx


def test_baseline_alternatives_follow_unlearn_anchors():
  alt = dimum.alternative_classes(6, (1, 2), "next")
  same = methods.baseline_alternatives(settings.of(anchor_cfg()), alt, (1, 2), 6)
  np.testing.assert_array_equal(same, alt)
  table = methods.baseline_alternatives(settings.of(anchor_cfg(unlearn__anchors="random")), alt, (1, 2), 6)
  assert table.shape[0] == 6 and table.ndim == 2
  for c in (1, 2):   # core.anchor_candidates' "random": the retained classes (CORE App. C)
    assert set(table[c].tolist()) == {0, 3, 4, 5}
  np.testing.assert_array_equal(table[0], 0)
  base = methods.baseline_alternatives(settings.of(anchor_cfg(unlearn__anchors="all_to_one", core__base=4)), alt, (1, 2), 6)
  assert set(base[1].tolist()) == set(base[2].tolist()) == {4}
  with pytest.raises(UserError, match="config.unlearn.anchors"):
    methods.baseline_alternatives(settings.of(anchor_cfg(unlearn__anchors="bijection")), alt, (1, 2), 6)


def test_baseline_alternatives_reach_salun_erasediff_and_ca():
  """The table (not `alt`) is what SalUn's, EraseDiff-rl's and CA-model's targets read: with
  all_to_one onto class 0 a stub eps_theta that encodes the label shows c' = 0, not alt = 3."""
  alt = dimum.alternative_classes(K, (1, 2), "next")          # alt[1] = alt[2] = 3
  cfg = anchor_cfg(unlearn__anchors="all_to_one", core__base=0, ca__images="forget")
  x_t = noised(KEYS).x_t
  for method in ("salun", "erasediff", "ca"):
    objectives, _, _ = methods.build(method, "", settings.of(cfg), alt=alt, steps=4, forget=(1, 2), num_classes=K)
    target_fn = objectives["forget"].target
    inputs = training.TargetInputs(lambda p, c: jnp.asarray(eps_np(p, x_t, np.asarray(c))), PARAMS,
                                   noised(KEYS), jnp.asarray(LABELS), {}, KEYS)
    np.testing.assert_allclose(target_fn(inputs), eps_np(PARAMS, x_t, np.zeros(3, np.int32)), rtol=1e-6,
                               err_msg=method)
