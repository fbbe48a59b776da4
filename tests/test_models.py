"""Tests for unlearn_jax.models: shapes, conditioning, closed-form pieces, builders.

Shapes at 28x28 / 32x32 / 64x64 are checked by tracing (`jax.eval_shape`), which
runs the whole module without compiling; numerics use tiny 8x8 models.
"""
import math

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from unlearn_jax import models
from unlearn_jax.errors import UserError
from unlearn_jax.models import layers
from unlearn_jax.models.classifier import Classifier, ClassifierConfig
from unlearn_jax.models.mlp import MLP, MLPConfig
from unlearn_jax.models.ddpm_unet import UNet, UNetConfig

K = 3  # classes of the tiny conditional models
TINY = dict(ch=8, ch_mult=(1, 2), num_res_blocks=1, groups=4)


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def _shape_params(module, *args, **kw):
  """Parameter shapes without compiling anything."""
  return jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *args, **kw))["params"]


def _names(tree, prefix=""):
  out = []
  for k, v in tree.items():
    out += _names(v, prefix + k + "/") if isinstance(v, dict) else [prefix + k]
  return out


def _perturb(params, seed=0, std=0.1):
  """Params moved off DDPM's init, where every residual branch ends in a ~0 conv
  (so labels, time and dropout barely reach the output): a stand-in for training."""
  rng = np.random.default_rng(seed)  # numpy: no per-shape compilation
  return jax.tree_util.tree_map(
      lambda p: p + jnp.asarray(std * rng.standard_normal(p.shape), p.dtype), params)


def _init_with_output(module, *args):
  """init_with_output, compiled like `models.init_params` (fast on CPU)."""
  rng = jax.random.PRNGKey(0)
  lowered = jax.jit(module.init_with_output).lower(rng, *args)
  return lowered.compile(compiler_options=models._INIT_COMPILER_OPTIONS.get(
      jax.default_backend()))(rng, *args)


@pytest.fixture(scope="module")
def tiny_cond():
  """8x8x1 conditional UNet: module, params at init, perturbed params, x, t."""
  cfg = UNetConfig(image_size=8, channels=1, num_classes=K, **TINY)
  module = UNet(cfg)
  params = models.init_params(module, jax.random.PRNGKey(0), (8, 8, 1), conditional=True)
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 8, 8, 1))
  t = jnp.array([0.1, 0.4, 0.7, 0.95])
  return module, params, _perturb(params), x, t


def _apply(module, params, *args, **kw):
  with jax.numpy_rank_promotion("raise"):
    return module.apply({"params": params}, *args, **kw)


# ---------------------------------------------------------------- layers

def test_sinusoidal_embedding_closed_form():
  t = jnp.array([0.0, 3.0])
  emb = layers.sinusoidal_embedding(t, 8)
  w = np.exp(-math.log(10000.0) * np.arange(4) / 3)
  np.testing.assert_allclose(emb[0], np.r_[np.zeros(4), np.ones(4)], atol=1e-7)
  np.testing.assert_allclose(emb[1], np.r_[np.sin(3 * w), np.cos(3 * w)], rtol=1e-6)
  assert layers.sinusoidal_embedding(t, 7).shape == (2, 7)


def test_num_groups_default_is_ddpms_rule():
  # score_sde / DDPM: GroupNorm(num_groups=min(C // 4, 32)).
  for c, g in ((16, 4), (32, 8), (64, 16), (128, 32), (256, 32), (512, 32), (12, 3), (4, 1)):
    assert layers.num_groups(c) == g, c
  assert UNetConfig(image_size=8, channels=1).groups == layers.DDPM_GROUPS


def test_ncsnpp_is_an_alias_of_the_ddpm_unet():
  a = models.build_model(ml_collections.ConfigDict(dict(name="ncsnpp", ch=8)), (8, 8, 1), 0)
  b = models.build_model(ml_collections.ConfigDict(dict(name="ddpm_unet", ch=8)), (8, 8, 1), 0)
  assert a[1] == b[1] and type(a[0]) is type(b[0]) is UNet


def test_num_groups_divides_channels():
  assert layers.num_groups(32, 8) == 8
  assert layers.num_groups(20, 8) == 5
  assert layers.num_groups(3, 8) == 3
  assert layers.num_groups(7, 4) == 1


def test_resnet_block_param_count_and_identity_at_init():
  """Params: GN 2C, conv 9CC'+C', Dense EC'+C', GN 2C', conv 9C'C'+C', skip CC'+C'.
  At init the last conv is ~0, so a same-width block is x / sqrt(2)."""
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 4, 6))
  emb = jax.random.normal(jax.random.PRNGKey(1), (2, 5))
  c, co, e = 6, 10, 5
  block = layers.ResnetBlock(co, groups=2)
  params = _shape_params(block, x, emb)
  expected = 2 * c + 9 * c * co + co + e * co + co + 2 * co + 9 * co * co + co + c * co + co
  assert _count(params) == expected
  same = layers.ResnetBlock(c, groups=2)
  out, _ = _init_with_output(same, x, emb)
  # variance scale 1e-10 leaves weights of std ~1e-5 (as in DDPM): near, not at, 0.
  np.testing.assert_allclose(out, x / math.sqrt(2.0), atol=1e-4)
  assert float(jnp.max(jnp.abs(out - x / math.sqrt(2.0)))) > 0


def test_attention_block_is_identity_over_sqrt2_at_init():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 4, 8))
  out, _ = _init_with_output(layers.AttnBlock(groups=4), x)
  np.testing.assert_allclose(out, x / math.sqrt(2.0), atol=1e-4)


def test_resampling():
  x = jnp.arange(2 * 7 * 7 * 3, dtype=jnp.float32).reshape(2, 7, 7, 3)
  up, _ = _init_with_output(layers.Upsample(with_conv=False), x)
  np.testing.assert_array_equal(up[:, ::2, ::2], x)
  np.testing.assert_array_equal(up[:, 1::2, 1::2], x)
  y = jnp.ones((2, 28, 28, 3))
  down = jax.eval_shape(lambda: layers.Downsample().init_with_output(jax.random.PRNGKey(0), y)[0])
  assert down.shape == (2, 14, 14, 3)
  pooled, _ = _init_with_output(layers.Downsample(with_conv=False), y)
  np.testing.assert_allclose(pooled, jnp.ones((2, 14, 14, 3)))


# ---------------------------------------------------------------- UNet

@pytest.mark.parametrize("shape", [(8, 8, 1), (28, 28, 1), (32, 32, 3)])
@pytest.mark.parametrize("num_classes", [0, 10])
def test_unet_output_shapes(shape, num_classes):
  cfg = UNetConfig(image_size=shape[0], channels=shape[2], num_classes=num_classes,
                   ch=8, ch_mult=(1, 2, 2), attn_resolutions=(shape[0] // 2,), groups=4)
  x = jnp.zeros((2,) + shape)
  t = jnp.full((2,), 0.5)
  labels = jnp.array([0, 1]) if num_classes else None
  with jax.numpy_rank_promotion("raise"):
    out, variables = jax.eval_shape(
        lambda: UNet(cfg).init_with_output(jax.random.PRNGKey(0), x, t, labels))
  assert out.shape == x.shape and out.dtype == jnp.float32
  names = _names(variables["params"])
  assert any("class_embed" in n for n in names) == (num_classes > 0)
  assert any("AttnBlock" in n for n in names)


def test_unet_forward_is_finite_and_starts_near_zero(tiny_cond):
  """Default init_scale=0: output conv weights of std ~1e-5, so the output starts near 0."""
  module, params, perturbed, x, t = tiny_cond
  out = _apply(module, params, x, t)
  assert out.shape == x.shape and bool(jnp.all(jnp.isfinite(out)))
  assert 0 < float(jnp.max(jnp.abs(out))) < 1e-3
  assert float(jnp.max(jnp.abs(_apply(module, perturbed, x, t)))) > 1e-2


def test_null_class_equals_labels_none(tiny_cond):
  module, _, params, x, t = tiny_cond
  out_none = _apply(module, params, x, t)
  out_null = _apply(module, params, x, t, jnp.full((4,), K))
  np.testing.assert_array_equal(out_none, out_null)


def test_labels_change_output_per_example(tiny_cond):
  module, _, params, x, t = tiny_cond
  a = _apply(module, params, x, t, jnp.array([0, 1, 2, 0]))
  b = _apply(module, params, x, t, jnp.array([1, 1, 2, 0]))
  assert float(jnp.max(jnp.abs(a[0] - b[0]))) > 1e-3
  np.testing.assert_allclose(a[1:], b[1:], atol=1e-5)  # examples are independent


def test_time_changes_output(tiny_cond):
  module, _, params, x, t = tiny_cond
  a = _apply(module, params, x, t)
  b = _apply(module, params, x, t.at[0].set(0.2))
  assert float(jnp.max(jnp.abs(a[0] - b[0]))) > 1e-3
  np.testing.assert_allclose(a[1:], b[1:], atol=1e-5)


def test_jit_apply_matches_eager(tiny_cond):
  module, _, params, x, t = tiny_cond
  labels = jnp.array([0, 1, 2, K])
  fn = jax.jit(lambda p, x, t, y: module.apply({"params": p}, x, t, y))
  np.testing.assert_allclose(fn(params, x, t, labels), _apply(module, params, x, t, labels),
                             rtol=1e-4, atol=1e-5)
  fn_null = jax.jit(lambda p, x, t: module.apply({"params": p}, x, t))
  assert fn_null(params, x, t).shape == x.shape


def test_unconditional_rejects_labels():
  module = UNet(UNetConfig(image_size=8, channels=1, **TINY))
  with pytest.raises(ValueError, match="unconditional"):
    _shape_params(module, jnp.zeros((1, 8, 8, 1)), jnp.zeros((1,)), jnp.zeros((1,), jnp.int32))


def test_param_counts_monotone_in_ch():
  counts = []
  for ch in (8, 16, 32):
    cfg = UNetConfig(image_size=28, channels=1, ch=ch, groups=4)
    counts.append(_count(_shape_params(UNet(cfg), jnp.zeros((1, 28, 28, 1)), jnp.zeros((1,)))))
  assert counts[0] < counts[1] < counts[2]


def test_dropout_only_active_in_train(tiny_cond):
  _, _, params, x, t = tiny_cond  # dropout adds no parameters
  module = UNet(UNetConfig(image_size=8, channels=1, num_classes=K, dropout=0.5, **TINY))
  ev1 = _apply(module, params, x, t)
  ev2 = _apply(module, params, x, t, rngs={"dropout": jax.random.PRNGKey(5)})
  np.testing.assert_array_equal(ev1, ev2)
  tr1 = _apply(module, params, x, t, train=True, rngs={"dropout": jax.random.PRNGKey(1)})
  tr2 = _apply(module, params, x, t, train=True, rngs={"dropout": jax.random.PRNGKey(2)})
  assert float(jnp.max(jnp.abs(tr1 - tr2))) > 1e-3
  assert float(jnp.max(jnp.abs(tr1 - ev1))) > 1e-3
  with pytest.raises(flax.errors.InvalidRngError):
    _apply(module, params, x, t, train=True)


# ---------------------------------------------------------------- MLP

def test_mlp_shapes_conditioning_and_time():
  module = MLP(MLPConfig(dim=2, hidden=16, num_layers=2, num_classes=K))
  params = models.init_params(module, jax.random.PRNGKey(0), (2,), conditional=True)
  x = jax.random.normal(jax.random.PRNGKey(1), (5, 2))
  t = jnp.linspace(0.1, 0.9, 5)
  out = _apply(module, params, x, t)
  assert out.shape == (5, 2)
  np.testing.assert_array_equal(out, _apply(module, params, x, t, jnp.full((5,), K)))
  y0 = _apply(module, params, x, t, jnp.zeros((5,), jnp.int32))
  assert float(jnp.min(jnp.max(jnp.abs(y0 - out), axis=-1))) > 1e-4
  later = _apply(module, params, x, t + 0.05)
  assert float(jnp.min(jnp.max(jnp.abs(later - out), axis=-1))) > 1e-4
  uncond = MLP(MLPConfig(dim=3, hidden=8, num_layers=1))
  assert jax.eval_shape(lambda: uncond.init_with_output(
      jax.random.PRNGKey(0), jnp.zeros((4, 3)), jnp.zeros((4,)))[0]).shape == (4, 3)


# ---------------------------------------------------------------- classifier

@pytest.mark.parametrize("shape", [(8, 8, 1), (28, 28, 1), (32, 32, 3), (64, 64, 3)])
def test_classifier_shapes(shape):
  module = Classifier(ClassifierConfig(num_classes=10, features=(8, 16, 16), dense=24))
  x = jnp.zeros((3,) + shape)
  variables = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), x))
  logits = jax.eval_shape(lambda v: module.apply(v, x), variables)
  feats = jax.eval_shape(lambda v: module.apply(v, x, method="features"), variables)
  assert logits.shape == (3, 10) and feats.shape == (3, 24)


def test_classifier_features_feed_logits_and_dropout():
  module = Classifier(ClassifierConfig(num_classes=4, features=(4, 8), dense=16, dropout=0.5))
  params = models.init_params(module, jax.random.PRNGKey(0), (8, 8, 1))
  x = jax.random.normal(jax.random.PRNGKey(1), (5, 8, 8, 1))
  feats = module.apply({"params": params}, x, method="features")
  logits = module.apply({"params": params}, x)
  head = params["head"]
  np.testing.assert_allclose(logits, feats @ head["kernel"] + head["bias"], rtol=1e-5, atol=1e-5)
  assert bool(jnp.all(feats >= 0))  # relu embedding
  train = module.apply({"params": params}, x, train=True, rngs={"dropout": jax.random.PRNGKey(3)})
  assert float(jnp.max(jnp.abs(train - logits))) > 1e-4


# ---------------------------------------------------------------- builders

def test_build_model_maps_fields_and_ignores_unknown_keys():
  cfg = ml_collections.ConfigDict(dict(name="ddpm_unet", ch=16, ch_mult=[1, 2], num_res_blocks=2,
                                       attn_resolutions=[14], output="eps", ema_rate=0.999))
  module, typed = models.build_model(cfg, (28, 28, 1), 10)
  assert isinstance(module, UNet) and typed == UNetConfig(
      image_size=28, channels=1, ch=16, ch_mult=(1, 2), num_res_blocks=2,
      attn_resolutions=(14,), num_classes=10)
  cfg.conditional = False
  assert models.build_model(cfg, (28, 28, 1), 10)[1].num_classes == 0
  mlp, mlp_cfg = models.build_model(
      ml_collections.ConfigDict(dict(name="mlp", hidden=32, output="score")), (2,), 0)
  assert isinstance(mlp, MLP) and mlp_cfg == MLPConfig(dim=2, hidden=32)
  clf, clf_cfg = models.build_classifier(
      ml_collections.ConfigDict(dict(features=[8], dense=16, lr=1e-3)), (8, 8, 1), 10)
  assert isinstance(clf, Classifier) and clf_cfg == ClassifierConfig(10, (8,), 16)


def test_build_model_user_errors():
  with pytest.raises(UserError) as err:
    models.build_model(ml_collections.ConfigDict(dict(name="resnet")), (28, 28, 1), 0)
  assert err.value.field == "config.model.name" and err.value.value == "resnet"
  with pytest.raises(UserError) as err:
    models.build_model(ml_collections.ConfigDict(dict(name="ddpm_unet", dropout=1.5)), (8, 8, 1), 0)
  assert err.value.field == "config.model.dropout"
  with pytest.raises(UserError) as err:  # 28 is not divisible by 2^3
    models.build_model(ml_collections.ConfigDict(dict(name="ddpm_unet", ch_mult=(1, 2, 2, 2))),
                       (28, 28, 1), 0)
  assert err.value.field == "config.data.image_size" and "divisible by 8" in str(err.value)
  with pytest.raises(UserError):
    models.build_model(ml_collections.ConfigDict(dict(name="mlp")), (8, 8, 1), 0)


def test_check_image_shape():
  typed = models.build_model(ml_collections.ConfigDict(dict(name="ddpm_unet")), (28, 28, 1), 10)[1]
  models.check_image_shape(typed, (28, 28, 1))
  with pytest.raises(UserError) as err:
    models.check_image_shape(typed, (32, 32, 3))
  assert err.value.field == "config.data.image_size" and err.value.value == (32, 32, 3)
  assert "28x28x1" in str(err.value)
  with pytest.raises(UserError, match="divisible by 4"):
    models.check_image_shape(UNetConfig(image_size=30, channels=1), (30, 30, 1))
  with pytest.raises(UserError, match="2-dimensional"):
    models.check_image_shape(MLPConfig(dim=2), (3,))
