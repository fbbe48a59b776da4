"""`models.inception`, `evaluation.inception_weights`, `evaluation.fid`: the FID InceptionV3 and its metrics.

The network is checked against an independent numpy forward pass written here
in torch's conventions (NCHW, OIHW kernels, torchvision's layer table with
pytorch-fid's FID patches), fed the same random torch-named state dict that
the converter turns into Flax variables.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unlearn_jax import evaluation
from unlearn_jax.evaluation import inception_weights
from unlearn_jax.models import inception

# --- the reference: torchvision's InceptionV3 layer table, FID variant ---------
# name -> (in, out, kh, kw, stride, pad_h, pad_w); every entry is conv (no bias) + BN.


def _c(cin, cout, kh=1, kw=1, stride=1, ph=0, pw=0):
  return (cin, cout, kh, kw, stride, ph, pw)


def _block_a(p, cin, pool):
  return {f"{p}.branch1x1": _c(cin, 64), f"{p}.branch5x5_1": _c(cin, 48), f"{p}.branch5x5_2": _c(48, 64, 5, 5, 1, 2, 2),
          f"{p}.branch3x3dbl_1": _c(cin, 64), f"{p}.branch3x3dbl_2": _c(64, 96, 3, 3, 1, 1, 1),
          f"{p}.branch3x3dbl_3": _c(96, 96, 3, 3, 1, 1, 1), f"{p}.branch_pool": _c(cin, pool)}


def _block_b(p, cin):
  return {f"{p}.branch3x3": _c(cin, 384, 3, 3, 2), f"{p}.branch3x3dbl_1": _c(cin, 64),
          f"{p}.branch3x3dbl_2": _c(64, 96, 3, 3, 1, 1, 1), f"{p}.branch3x3dbl_3": _c(96, 96, 3, 3, 2)}


def _block_c(p, c7):
  row, col = (1, 7, 1, 0, 3), (7, 1, 1, 3, 0)
  return {f"{p}.branch1x1": _c(768, 192), f"{p}.branch7x7_1": _c(768, c7), f"{p}.branch7x7_2": _c(c7, c7, *row),
          f"{p}.branch7x7_3": _c(c7, 192, *col), f"{p}.branch7x7dbl_1": _c(768, c7),
          f"{p}.branch7x7dbl_2": _c(c7, c7, *col), f"{p}.branch7x7dbl_3": _c(c7, c7, *row),
          f"{p}.branch7x7dbl_4": _c(c7, c7, *col), f"{p}.branch7x7dbl_5": _c(c7, 192, *row),
          f"{p}.branch_pool": _c(768, 192)}


def _block_d(p):
  return {f"{p}.branch3x3_1": _c(768, 192), f"{p}.branch3x3_2": _c(192, 320, 3, 3, 2),
          f"{p}.branch7x7x3_1": _c(768, 192), f"{p}.branch7x7x3_2": _c(192, 192, 1, 7, 1, 0, 3),
          f"{p}.branch7x7x3_3": _c(192, 192, 7, 1, 1, 3, 0), f"{p}.branch7x7x3_4": _c(192, 192, 3, 3, 2)}


def _block_e(p, cin):
  row, col = (1, 3, 1, 0, 1), (3, 1, 1, 1, 0)
  return {f"{p}.branch1x1": _c(cin, 320), f"{p}.branch3x3_1": _c(cin, 384), f"{p}.branch3x3_2a": _c(384, 384, *row),
          f"{p}.branch3x3_2b": _c(384, 384, *col), f"{p}.branch3x3dbl_1": _c(cin, 448),
          f"{p}.branch3x3dbl_2": _c(448, 384, 3, 3, 1, 1, 1), f"{p}.branch3x3dbl_3a": _c(384, 384, *row),
          f"{p}.branch3x3dbl_3b": _c(384, 384, *col), f"{p}.branch_pool": _c(cin, 192)}


CONVS = {
    "Conv2d_1a_3x3": _c(3, 32, 3, 3, 2), "Conv2d_2a_3x3": _c(32, 32, 3, 3), "Conv2d_2b_3x3": _c(32, 64, 3, 3, 1, 1, 1),
    "Conv2d_3b_1x1": _c(64, 80), "Conv2d_4a_3x3": _c(80, 192, 3, 3),
    **_block_a("Mixed_5b", 192, 32), **_block_a("Mixed_5c", 256, 64), **_block_a("Mixed_5d", 288, 64),
    **_block_b("Mixed_6a", 288),
    **_block_c("Mixed_6b", 128), **_block_c("Mixed_6c", 160), **_block_c("Mixed_6d", 160), **_block_c("Mixed_6e", 192),
    **_block_d("Mixed_7a"), **_block_e("Mixed_7b", 1280), **_block_e("Mixed_7c", 2048),
}
#: trainable parameters: conv kernels, BN scale and bias, fc weight and bias.  This equals the
#: published count of torchvision's inception_v3(aux_logits=False) (23,834,568 with 1000
#: classes) plus 8 x 2049 for the FID net's 1008-way fc.
EXPECTED_PARAMS = sum(ci * co * kh * kw + 2 * co for ci, co, kh, kw, *_ in CONVS.values()) + 2048 * 1008 + 1008


def _random_state_dict(seed: int = 0):
  """A pytorch-fid state dict (torch names and layouts) with random, activation-preserving values."""
  rng = np.random.default_rng(seed)
  sd = {}
  for name, (ci, co, kh, kw, *_) in CONVS.items():
    sd[f"{name}.conv.weight"] = rng.normal(0, np.sqrt(2.0 / (ci * kh * kw)), (co, ci, kh, kw)).astype(np.float32)
    sd[f"{name}.bn.weight"] = rng.uniform(0.8, 1.2, co).astype(np.float32)
    sd[f"{name}.bn.bias"] = rng.normal(0, 0.1, co).astype(np.float32)
    sd[f"{name}.bn.running_mean"] = rng.normal(0, 0.1, co).astype(np.float32)
    sd[f"{name}.bn.running_var"] = rng.uniform(0.5, 1.5, co).astype(np.float32)
    sd[f"{name}.bn.num_batches_tracked"] = np.array(7, np.int64)
  sd["fc.weight"] = rng.normal(0, 1 / np.sqrt(2048), (1008, 2048)).astype(np.float32)
  sd["fc.bias"] = rng.normal(0, 1, 1008).astype(np.float32)
  return sd


# --- an independent forward pass in numpy, torch conventions (NCHW, OIHW) ------

def _np_conv_bn_relu(sd, name, x):
  _, _, kh, kw, s, ph, pw = CONVS[name]
  w = sd[f"{name}.conv.weight"].astype(np.float64)
  x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
  oh, ow = (x.shape[2] - kh) // s + 1, (x.shape[3] - kw) // s + 1
  out = np.zeros((x.shape[0], w.shape[0], oh, ow))
  for a in range(kh):
    for b in range(kw):
      patch = x[:, :, a:a + s * (oh - 1) + 1:s, b:b + s * (ow - 1) + 1:s]
      out += np.einsum("nchw,oc->nohw", patch, w[:, :, a, b], optimize=True)
  g = lambda k: sd[f"{name}.bn.{k}"].astype(np.float64)[None, :, None, None]  # noqa: E731
  out = (out - g("running_mean")) / np.sqrt(g("running_var") + 1e-3) * g("weight") + g("bias")
  return np.maximum(out, 0.0)


def _np_windows(x, stride, pad, fill):
  """(N, C, oh, ow, 9) 3 x 3 windows of x padded by `pad` with `fill`."""
  x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=fill)
  oh, ow = (x.shape[2] - 3) // stride + 1, (x.shape[3] - 3) // stride + 1
  return np.stack([x[:, :, a:a + stride * (oh - 1) + 1:stride, b:b + stride * (ow - 1) + 1:stride]
                   for a in range(3) for b in range(3)], -1)


def _np_avg_pool_exclude_pad(x):
  total = _np_windows(x, 1, 1, 0.0).sum(-1)
  count = _np_windows(np.ones_like(x), 1, 1, 0.0).sum(-1)
  return total / count


def _np_max_pool(x, stride, pad):
  return _np_windows(x, stride, pad, -np.inf).max(-1)


def _np_block(sd, p, x, kind):
  f = lambda n, y: _np_conv_bn_relu(sd, f"{p}.{n}", y)  # noqa: E731
  if kind == "A":
    return np.concatenate([f("branch1x1", x), f("branch5x5_2", f("branch5x5_1", x)),
                           f("branch3x3dbl_3", f("branch3x3dbl_2", f("branch3x3dbl_1", x))),
                           f("branch_pool", _np_avg_pool_exclude_pad(x))], 1)
  if kind == "B":
    return np.concatenate([f("branch3x3", x), f("branch3x3dbl_3", f("branch3x3dbl_2", f("branch3x3dbl_1", x))),
                           _np_max_pool(x, 2, 0)], 1)
  if kind == "C":
    b7 = f("branch7x7_3", f("branch7x7_2", f("branch7x7_1", x)))
    bd = x
    for i in range(1, 6):
      bd = f(f"branch7x7dbl_{i}", bd)
    return np.concatenate([f("branch1x1", x), b7, bd, f("branch_pool", _np_avg_pool_exclude_pad(x))], 1)
  if kind == "D":
    b7 = x
    for i in range(1, 5):
      b7 = f(f"branch7x7x3_{i}", b7)
    return np.concatenate([f("branch3x3_2", f("branch3x3_1", x)), b7, _np_max_pool(x, 2, 0)], 1)
  b3 = f("branch3x3_1", x)
  bd = f("branch3x3dbl_2", f("branch3x3dbl_1", x))
  pool = _np_max_pool(x, 1, 1) if kind == "E_2" else _np_avg_pool_exclude_pad(x)
  return np.concatenate([f("branch1x1", x), f("branch3x3_2a", b3), f("branch3x3_2b", b3),
                         f("branch3x3dbl_3a", bd), f("branch3x3dbl_3b", bd), f("branch_pool", pool)], 1)


def _np_inception(sd, images_uint8):
  """pool3, spatial (NHWC-flattened first 7 channels of Mixed_6d), logits: pytorch-fid's forward, resize off."""
  x = (2.0 * images_uint8.astype(np.float64) / 255.0 - 1.0).transpose(0, 3, 1, 2)
  for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3"):
    x = _np_conv_bn_relu(sd, name, x)
  x = _np_max_pool(x, 2, 0)
  x = _np_conv_bn_relu(sd, "Conv2d_4a_3x3", _np_conv_bn_relu(sd, "Conv2d_3b_1x1", x))
  x = _np_max_pool(x, 2, 0)
  for p, kind in [("Mixed_5b", "A"), ("Mixed_5c", "A"), ("Mixed_5d", "A"), ("Mixed_6a", "B"), ("Mixed_6b", "C"),
                  ("Mixed_6c", "C"), ("Mixed_6d", "C")]:
    x = _np_block(sd, p, x, kind)
  spatial = x[:, :7].transpose(0, 2, 3, 1).reshape(x.shape[0], -1)
  for p, kind in [("Mixed_6e", "C"), ("Mixed_7a", "D"), ("Mixed_7b", "E_1"), ("Mixed_7c", "E_2")]:
    x = _np_block(sd, p, x, kind)
  pool3 = x.mean(axis=(2, 3))
  return pool3, spatial, pool3 @ sd["fc.weight"].T.astype(np.float64) + sd["fc.bias"]


# --- fixtures -------------------------------------------------------------------

#: 107 x 107 is the smallest input whose Mixed_7b/7c maps are 2 x 2, so their pools see padding.
SIDE = 107


@pytest.fixture(scope="module")
def state_dict():
  return _random_state_dict()


@pytest.fixture(scope="module")
def variables(state_dict):
  return inception_weights.convert_state_dict(state_dict)


@pytest.fixture(scope="module")
def images():
  return np.random.default_rng(1).integers(0, 256, (3, SIDE, SIDE, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def features(variables, images):
  # batch 2 over 3 images: the padded last batch is exercised too.
  return evaluation.inception_features(variables, images, batch_size=2, size=None)


# --- architecture ---------------------------------------------------------------

def test_output_shapes_at_299_and_parameter_count():
  shapes = inception.variable_shapes()
  out = jax.eval_shape(lambda v: inception.InceptionV3().apply(v, jnp.zeros((2, 299, 299, 3))), shapes)
  assert out.pool3.shape == (2, 2048)
  assert out.spatial.shape == (2, 7 * 17 * 17) == (2, inception.spatial_dim(299))
  assert out.logits.shape == out.logits_unbiased.shape == (2, 1008)
  n_params = sum(x.size for x in jax.tree.leaves(shapes["params"]))
  assert n_params == EXPECTED_PARAMS == 23_850_960
  n_stats = sum(x.size for x in jax.tree.leaves(shapes["batch_stats"]))
  assert n_stats == 2 * sum(co for _, co, *_ in CONVS.values())
  assert inception.spatial_dim(SIDE) == 7 * 5 * 5


def test_network_matches_numpy_reference(state_dict, images, features):
  """Every layer, pool, padding and concatenation order, against the torch-convention numpy forward."""
  pool3, spatial, logits = _np_inception(state_dict, images)
  assert features.pool3.shape == (3, 2048) and features.spatial.shape == (3, 175)
  assert np.std(pool3) > 1e-2  # the random net did not collapse to zeros
  for got, want in [(features.pool3, pool3), (features.spatial, spatial), (features.logits, logits)]:
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4 * np.abs(want).max())
  np.testing.assert_allclose(features.logits_unbiased, logits - state_dict["fc.bias"], rtol=1e-4,
                             atol=1e-4 * np.abs(logits).max())


def test_pools_ignore_padding():
  x = jnp.arange(9.0).reshape(1, 3, 3, 1)
  avg = np.asarray(inception.avg_pool_3x3(x))[0, :, :, 0]
  assert avg[0, 0] == pytest.approx((0 + 1 + 3 + 4) / 4)  # 4 pixels in the window, not 9
  assert avg[1, 1] == pytest.approx(4.0)
  mx = np.asarray(inception.max_pool_3x3(-1.0 - x))[0, :, :, 0]
  assert mx[2, 2] == pytest.approx(-5.0)  # padding is -inf, not 0
  assert np.asarray(inception.max_pool_3x3_s2(x)).shape == (1, 1, 1, 1)


# --- input conventions ----------------------------------------------------------

def _torch_bilinear_matrix(n_in, n_out):
  """Rows: torch's F.interpolate(mode='bilinear', align_corners=False) weights, one output pixel each."""
  src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
  i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
  i1 = np.minimum(i0 + 1, n_in - 1)
  m = np.zeros((n_out, n_in))
  np.add.at(m, (np.arange(n_out), i0), 1.0 - (src - i0))
  np.add.at(m, (np.arange(n_out), i1), src - i0)
  return m


@pytest.mark.parametrize("n_in, n_out", [(7, 17), (17, 7), (32, 299)])
def test_resize_is_torch_bilinear_without_antialias(n_in, n_out):
  x = np.random.default_rng(2).uniform(size=(1, n_in, n_in, 2))
  m = _torch_bilinear_matrix(n_in, n_out)
  want = np.einsum("ah,bw,nhwc->nabc", m, m, x)
  np.testing.assert_allclose(np.asarray(inception.resize_bilinear(jnp.asarray(x, jnp.float32), n_out)), want,
                             atol=1e-5)


def test_preprocess_scaling_and_constant_images():
  for side in (17, 400):
    for c in (0.0, 0.3, 1.0):
      out = np.asarray(inception.preprocess(np.full((1, side, side, 3), c)))
      assert out.shape == (1, 299, 299, 3)
      np.testing.assert_allclose(out, 2 * c - 1, atol=1e-6)
  np.testing.assert_allclose(np.asarray(inception.preprocess(np.array([[[[0.0, 0.5, 1.0]]]]), None)), [[[[-1, 0, 1]]]])


def test_quantize_uint8():
  x = np.array([-0.2, 0.0, 1 / 255, 0.5, 0.998, 1.0, 1.3])
  q = inception.quantize_uint8(x)
  assert q.dtype == np.uint8
  np.testing.assert_array_equal(q, [0, 0, 1, 128, 254, 255, 255])


def test_float_images_are_quantized_like_uint8(variables, images, features):
  got = evaluation.inception_features(variables, images[:2] / 255.0 + 0.001, batch_size=2, size=None)
  np.testing.assert_array_equal(got.pool3, features.pool3[:2])


# --- weights ----------------------------------------------------------------------

@pytest.mark.parametrize("name, side", [("Conv2d_1a_3x3", 7), ("Mixed_6b.branch7x7_2", 5)])
def test_converted_conv_matches_torch_layout(state_dict, variables, name, side):
  """One converted layer, applied by Flax, against the torch-layout (OIHW) weights by hand."""
  ci, co, kh, kw, s, ph, pw = CONVS[name]
  x = np.random.default_rng(3).normal(size=(1, ci, side, side))
  sub = lambda col: functools.reduce(lambda t, k: t[k], name.split("."), variables[col])  # noqa: E731
  layer = inception.BasicConv(co, (kh, kw), (s, s), (ph, pw))
  got = layer.apply({"params": sub("params"), "batch_stats": sub("batch_stats")},
                    jnp.asarray(x.transpose(0, 2, 3, 1), jnp.float32))
  want = _np_conv_bn_relu(state_dict, name, x).transpose(0, 2, 3, 1)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)


def test_converted_fc(state_dict, variables):
  x = np.random.default_rng(3).normal(size=(2, 2048)).astype(np.float32)
  logits, unbiased = inception.Logits().apply({"params": variables["params"]["fc"]}, x)
  want = x @ state_dict["fc.weight"].T
  np.testing.assert_allclose(np.asarray(unbiased), want, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.asarray(logits), want + state_dict["fc.bias"], rtol=1e-4, atol=1e-4)


def test_conversion_is_strict(state_dict):
  sd = dict(state_dict)
  del sd["Mixed_7c.branch_pool.bn.running_var"]
  with pytest.raises(ValueError, match="missing"):
    inception_weights.convert_state_dict(sd)
  with pytest.raises(ValueError, match="unknown"):
    inception_weights.convert_state_dict({**state_dict, "AuxLogits.fc.stddev": np.zeros(1)})
  with pytest.raises(ValueError, match="wrong shapes"):
    inception_weights.convert_state_dict({**state_dict, "fc.bias": np.zeros(1000, np.float32)})
  with pytest.raises(ValueError, match="unexpected"):
    inception_weights.convert_state_dict({**state_dict, "Mixed_8a.branch1x1.bn.bias": np.zeros(3)})


def test_npz_round_trip_gives_identical_features(tmp_path, monkeypatch, state_dict, variables, images, features):
  # The command-line converter, with the torch reader replaced by the state dict itself.
  monkeypatch.setattr(inception_weights, "read_pth", lambda path: state_dict)
  out = str(tmp_path / "inception_fid.npz")
  inception_weights.main(["--pth", str(tmp_path / "w.pth"), "--out", out])
  loaded = inception_weights.load_inception_variables(out)
  assert jax.tree.structure(loaded) == jax.tree.structure(variables)
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(variables)))
  again = evaluation.inception_features(loaded, images, batch_size=2, size=None)
  for a, b in zip(again, features):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError):
    inception_weights.load_inception_variables(str(tmp_path / "w.msgpack"))


def test_pth_hash_prefix_is_checked(tmp_path):
  import hashlib
  data = b"not really a state dict"
  good = tmp_path / f"pt_inception-2015-12-05-{hashlib.sha256(data).hexdigest()[:8]}.pth"
  bad = tmp_path / "pt_inception-2015-12-05-00000000.pth"
  for p in (good, bad):
    p.write_bytes(data)
  inception_weights._check_hash_prefix(str(good))
  inception_weights._check_hash_prefix(str(tmp_path / "plain.pth"))  # no hash in the name: nothing to check
  with pytest.raises(ValueError, match="SHA-256"):
    inception_weights._check_hash_prefix(str(bad))


# --- FID / sFID ----------------------------------------------------------------------

def test_fid_of_a_set_with_itself_is_zero():
  x = np.random.default_rng(4).normal(size=(300, 20)) @ np.random.default_rng(5).normal(size=(20, 20))
  assert abs(evaluation.fid(x, x)) < 1e-8


def _with_exact_stats(rng, mu, var, n=400):
  """n samples whose sample mean is mu and unbiased sample covariance is diag(var), exactly."""
  z = rng.normal(size=(n, mu.size))
  z -= z.mean(0)
  z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T
  return mu + z * np.sqrt(var)


def test_fid_matches_closed_form_for_diagonal_gaussians():
  rng = np.random.default_rng(6)
  mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
  v1, v2 = rng.uniform(0.1, 4.0, 5), rng.uniform(0.1, 4.0, 5)
  expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
  x1, x2 = _with_exact_stats(rng, mu1, v1), _with_exact_stats(rng, mu2, v2)
  assert evaluation.fid(x1, x2) == pytest.approx(expected, rel=1e-9)
  assert evaluation.fid((mu1, np.diag(v1)), x2) == pytest.approx(expected, rel=1e-9)


def test_stats_file_and_cache(tmp_path):
  x = np.random.default_rng(7).normal(size=(50, 4))
  path = str(tmp_path / "cifar10_train.npz")
  calls = []
  mu, sigma = evaluation.cached_fid_stats(path, lambda: calls.append(1) or x)
  mu2, sigma2 = evaluation.cached_fid_stats(path, lambda: calls.append(1) or x)
  assert calls == [1]
  with np.load(path) as f:
    assert sorted(f.files) == ["mu", "sigma"]
  np.testing.assert_array_equal(mu, mu2)
  np.testing.assert_array_equal(sigma, sigma2)
  np.testing.assert_allclose(sigma, np.cov(x, rowvar=False))
  assert evaluation.fid(evaluation.load_fid_stats(path), x) < 1e-9


# --- Inception Score -----------------------------------------------------------------

def test_inception_score_uniform_is_one_and_confident_spread_is_c():
  mean, std = evaluation.inception_score(np.zeros((40, 1008)), splits=4)
  assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)
  c = 5
  one_hot = 60.0 * np.eye(c)[np.arange(50) % c]  # each split of 10 holds every class twice
  mean, std = evaluation.inception_score(np.concatenate([one_hot, np.zeros((50, 3))], 1), splits=5)
  assert mean == pytest.approx(c, rel=1e-9) and std == pytest.approx(0.0, abs=1e-9)


def test_inception_score_hand_computed():
  p = np.array([[1.0, 0.0], [0.5, 0.5]])
  py = p.mean(0)
  kl = [np.log(1 / py[0]), 0.5 * np.log(0.5 / py[0]) + 0.5 * np.log(0.5 / py[1])]
  logits = np.log(np.maximum(p, 1e-30))
  mean, _ = evaluation.inception_score(logits, splits=1)
  assert mean == pytest.approx(np.exp(np.mean(kl)), rel=1e-9)


# --- precision / recall --------------------------------------------------------------

def test_manifold_radius_is_kth_neighbour_excluding_self():
  x = np.array([[0.0], [1.0], [2.0], [3.0], [10.0]])
  np.testing.assert_allclose(evaluation.manifold_radii(x, k=1), np.array([1, 1, 1, 1, 7]) ** 2)
  np.testing.assert_allclose(evaluation.manifold_radii(x, k=2, block=2), np.array([2, 1, 1, 2, 8]) ** 2)
  # Real radii (k = 1) are 1, 1, 1, 1, 7: 0.5 lies in 0's ball, 5 in 10's, 20 in none.
  precision, _ = evaluation.precision_recall(x, np.array([[0.5], [5.0], [20.0]]), k=1)
  assert precision == pytest.approx(2 / 3)
  # Generated radii are all 0.5: 0, 1 and 2 are covered, 3 and 10 are not.
  precision, recall = evaluation.precision_recall(x, np.array([[0.5], [1.0], [1.5]]), k=1)
  assert precision == 1.0
  assert recall == pytest.approx(3 / 5)


def test_precision_recall_on_known_clouds():
  rng = np.random.default_rng(8)
  real = rng.uniform(size=(200, 2))
  assert evaluation.precision_recall(real, real) == (1.0, 1.0)
  assert evaluation.precision_recall(real, real + 100.0) == (0.0, 0.0)
  left = real[real[:, 0] < 0.5]  # a subset of the real points: all inside, half of the support missing
  precision, recall = evaluation.precision_recall(real, left, block=64)
  assert precision == 1.0
  assert 0.3 < recall < 0.8


def test_inception_metrics_by_name():
  rng = np.random.default_rng(9)
  fake = lambda n: inception.InceptionFeatures(  # noqa: E731
      rng.normal(size=(n, 8)), rng.normal(size=(n, 6)), rng.normal(size=(n, 10)), rng.normal(size=(n, 10)))
  real = fake(40)
  out = evaluation.inception_metrics(real, real, k=3, splits=4)
  assert set(out) == {"fid", "sfid", "inception_score", "inception_score_std", "precision", "recall"}
  assert out["fid"] < 1e-8 and out["sfid"] < 1e-8 and out["precision"] == out["recall"] == 1.0
  assert out["inception_score"] == evaluation.inception_score(real.logits_unbiased, 4)[0]  # the reference's IS
  assert out["inception_score"] != evaluation.inception_score(real.logits, 4)[0]
