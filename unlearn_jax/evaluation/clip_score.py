"""CLIP score of (image, prompt) pairs and the CLIP embedding distance of two image sets.

    comp = load_clip("/data/clip-vit-large-patch14")   # CLIPComponents
    s = mean_clip_score(comp, images01, prompts)       # float; clip_scores: per pair
    d = clip_embedding_distance(comp, restored01, original01)

Definitions.  With E_img, E_txt CLIP's projected image / text embeddings
(`FlaxCLIPModel.get_image_features` / `get_text_features`) and
cos(u, v) = <u, v> / (|u| |v|):

  * CLIP score of a pair:  scale * max(cos(E_img(x), E_txt(p)), 0), averaged over
    the pairs.  scale = 100 (the default) is the convention of torchmetrics'
    `CLIPScore` and of the diffusion unlearning papers that report "CLIP score"
    on COCO / I2P prompts; Hessel et al. (2021, CLIPScore, Eq. 1) use
    w = 2.5: `mean_clip_score(..., scale=2.5)`.  Clipping at 0 is part of both.
    (The mean is `mean_clip_score`, not `clip_score`, so that the package-level
    name `evaluation.clip_score` stays this module.)
  * CLIP embedding distance of two image sets paired by position (SGU's Table 3,
    restored vs. original images): the mean over pairs of 1 - cos(E_img(a_i),
    E_img(b_i)); 0 for identical images, at most 2.

Preprocessing (`clip_preprocess`, the one place it happens) follows
`CLIPImageProcessor`: resize the shortest side to `size` (the long side to
int(size * long / short)) with bicubic interpolation, center-crop `crop_size`
x `crop_size` (top = (h - crop) // 2, left likewise), then (x - mean) / std per
channel, NCHW.  Inputs are float NHWC images in [0, 1] (what the library's
samplers produce); they are not quantised to uint8.  The processor resizes with
PIL's BICUBIC: Keys' cubic (a = -0.5), its support widened by the scale when
down-sampling, applied as two separable passes (width, then height), each
rounded and clipped to uint8.  Here each pass is `jax.image.resize(...,
"bicubic", antialias=True)` (the same kernel and widening) clipped to [0, 1],
so the two differ only by PIL's uint8 rounding: at most ~1/255 per pixel (one
pass done at once, without the clip between the passes, differed by up to 0.02
next to sharp edges; tests/evaluation/test_clip_score.py compares with the
processor).  size, crop_size, mean and std are read from the directory's
preprocessor_config.json when it has one, else size = crop_size =
vision_config.image_size and OpenAI CLIP's mean / std.

Prompts are tokenised with the directory's `CLIPTokenizer`, padded to
max_length (the tokenizer's model_max_length, at most the text model's
max_position_embeddings: 77 for CLIP) and truncated there.  CLIP pools its text
at the first end-of-text token under a causal mask, so the padding changes no
embedding.

Weights.  `load_clip` reads a local transformers-format directory (config.json,
flax_model.msgpack, the tokenizer's vocab.json / merges.txt, optionally
preprocessor_config.json) with `local_files_only`; nothing is downloaded.  The
hub's `openai/clip-vit-large-patch14` (torchmetrics' default) and
`openai/clip-vit-base-patch32` carry Flax weights (e.g. `huggingface-cli download
openai/clip-vit-large-patch14 --local-dir clip-vit-large-patch14`); a directory
with PyTorch weights only loads with `from_pt=True`, which needs torch.

Embeddings are computed in batches of `batch_size` (the last one padded), by one
jitted function per (components, kind): one compile per batch shape.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from unlearn_jax import lazy
from unlearn_jax import mesh as mesh_lib
from unlearn_jax.errors import UserError

transformers = lazy.load("transformers", extra="sd")

__all__ = [
    "CLIPComponents", "clip_embedding_distance", "clip_image_embeddings", "clip_preprocess",
    "clip_scores", "clip_scores_from_embeddings", "clip_text_embeddings", "cosine_distances",
    "load_clip", "mean_clip_score", "resized_shape",
]

#: OpenAI CLIP's per-channel normalisation (transformers' OPENAI_CLIP_MEAN / _STD).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: the score's scale: 100 (torchmetrics, the unlearning papers); Hessel et al. use 2.5.
DEFAULT_SCALE = 100.0
_FIELD = "clip.model_dir"
_EXPECTED = ("a transformers-format CLIP directory (config.json, flax_model.msgpack, vocab.json, "
             "merges.txt; PyTorch weights need from_pt=True and torch)")


@dataclasses.dataclass
class CLIPComponents:
  """A loaded CLIP model, its tokenizer and its image preprocessing constants."""
  model: Any                         # transformers.FlaxCLIPModel (params passed explicitly)
  params: Any
  tokenizer: Any                     # transformers.CLIPTokenizer
  size: int                          # the shortest side after resizing
  crop_size: int                     # the side of the square center crop
  mean: Tuple[float, float, float]
  std: Tuple[float, float, float]
  max_length: int                    # prompts are padded / truncated to this many tokens
  model_dir: str
  _jitted: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)


# --------------------------------------------------------------------------- loading

def _check_dir(model_dir: str, from_pt: bool):
  if not os.path.isdir(model_dir):
    raise UserError(_FIELD, model_dir, _EXPECTED + "; the directory does not exist")
  weights = (("pytorch_model.bin", "model.safetensors") if from_pt
             else ("flax_model.msgpack", "flax_model.msgpack.index.json"))
  for names in (("config.json",), weights, ("vocab.json",), ("merges.txt",)):
    if not any(os.path.isfile(os.path.join(model_dir, n)) for n in names):
      raise UserError(_FIELD, model_dir, f"{_EXPECTED}; it has none of {', '.join(names)}")


def _side(value, default: int) -> int:
  """An image processor's size / crop_size entry (int or dict) as one side length."""
  if value is None:
    return int(default)
  if isinstance(value, dict):
    return int(value.get("shortest_edge") or value.get("height") or default)
  return int(value)


def _image_constants(model_dir: str, image_size: int):
  """(size, crop_size, mean, std) from preprocessor_config.json, else CLIP's defaults."""
  if not os.path.isfile(os.path.join(model_dir, "preprocessor_config.json")):
    return image_size, image_size, CLIP_MEAN, CLIP_STD
  proc = transformers.CLIPImageProcessor.from_pretrained(model_dir, local_files_only=True)
  size = _side(proc.size if proc.do_resize else None, image_size)
  crop = _side(proc.crop_size if proc.do_center_crop else None, size)
  mean = tuple(float(m) for m in (proc.image_mean if proc.do_normalize else (0.0,) * 3))
  std = tuple(float(s) for s in (proc.image_std if proc.do_normalize else (1.0,) * 3))
  return size, crop, mean, std


def load_clip(model_dir: str, *, dtype=jnp.float32, from_pt: bool = False) -> CLIPComponents:
  """Loads a local CLIP directory (see the module docstring); nothing is downloaded.

  Args:
    model_dir: a transformers-format CLIP directory.
    dtype: the compute dtype of the model (the parameters stay as stored).
    from_pt: convert PyTorch weights (needs torch installed).
  Raises:
    UserError("clip.model_dir", ...) when the directory or one of its files is missing.
  """
  model_dir = os.fspath(model_dir)
  _check_dir(model_dir, from_pt)
  transformers.utils.logging.set_verbosity_error()
  model, params = transformers.FlaxCLIPModel.from_pretrained(model_dir, dtype=dtype, from_pt=from_pt,
                                                _do_init=False, local_files_only=True)
  tokenizer = transformers.CLIPTokenizer.from_pretrained(model_dir, local_files_only=True)
  size, crop, mean, std = _image_constants(model_dir, model.config.vision_config.image_size)
  max_length = min(int(tokenizer.model_max_length),
                   int(model.config.text_config.max_position_embeddings))
  return CLIPComponents(model=model, params=params, tokenizer=tokenizer, size=size, crop_size=crop,
                        mean=mean, std=std, max_length=max_length, model_dir=model_dir)


# --------------------------------------------------------------------------- preprocessing

def resized_shape(height: int, width: int, size: int) -> Tuple[int, int]:
  """(h, w) with the shortest side `size` and the aspect ratio kept (CLIPImageProcessor's rule)."""
  if height <= width:
    return size, int(size * width / height)
  return int(size * height / width), size


def clip_preprocess(images01_BxHxWx3, *, size: int, crop_size: int,
                    mean: Sequence[float] = CLIP_MEAN,
                    std: Sequence[float] = CLIP_STD) -> jax.Array:
  """CLIP's pixel values (B, 3, crop, crop) of float NHWC images in [0, 1] (pure, jittable).

  Bicubic resize of the shortest side to `size` (antialiased, in PIL's two passes,
  each clipped to [0, 1]), center crop, per-channel (x - mean) / std; see the
  module docstring.
  """
  x = jnp.asarray(images01_BxHxWx3, jnp.float32)
  b, h, w, c = x.shape
  nh, nw = resized_shape(h, w, size)
  # PIL's two passes, each clipped as its uint8 output is: the width, then the height.
  if nw != w:
    x = jnp.clip(jax.image.resize(x, (b, h, nw, c), "bicubic", antialias=True), 0.0, 1.0)
  if nh != h:
    x = jnp.clip(jax.image.resize(x, (b, nh, nw, c), "bicubic", antialias=True), 0.0, 1.0)
  top, left = (nh - crop_size) // 2, (nw - crop_size) // 2
  if top < 0 or left < 0:
    raise ValueError(f"crop_size {crop_size} exceeds the resized image {nh}x{nw}")
  x = x[:, top:top + crop_size, left:left + crop_size]
  x = (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
  return jnp.transpose(x, (0, 3, 1, 2))


# --------------------------------------------------------------------------- embeddings

def _l2_normalise(x: jax.Array) -> jax.Array:
  x = x.astype(jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _jitted(comp: CLIPComponents, kind: str):
  """The jitted (params, batch...) -> unit embeddings function of `comp` (one per kind)."""
  if kind not in comp._jitted:
    model = comp.model
    if kind == "image":
      consts = dict(size=comp.size, crop_size=comp.crop_size, mean=comp.mean, std=comp.std)

      def f(params, images01):
        pixels = clip_preprocess(images01, **consts)
        return _l2_normalise(model.get_image_features(pixels, params=params))
    else:
      def f(params, ids, mask):
        return _l2_normalise(model.get_text_features(ids, attention_mask=mask, params=params))
    comp._jitted[kind] = jax.jit(f)
  return comp._jitted[kind]


def _batched(fn, params, arrays: Sequence[np.ndarray], batch_size: int) -> np.ndarray:
  """fn(params, *chunk) over chunks of `batch_size` rows split over the mesh (`mesh.map_batches`)."""
  out = mesh_lib.map_batches(lambda p, xs: fn(p, *xs), params, tuple(arrays), batch_size,
                             label="CLIP", unit="inputs")
  return np.asarray(out, np.float32)


def clip_image_embeddings(comp: CLIPComponents, images01: np.ndarray, *,
                          batch_size: int = 32) -> np.ndarray:
  """(N, D) unit-norm CLIP image embeddings of float NHWC images in [0, 1]."""
  images01 = np.asarray(images01, np.float32)
  if images01.ndim != 4 or images01.shape[-1] != 3:
    raise ValueError(f"expected NHWC RGB images, got shape {images01.shape}")
  if not len(images01):
    return np.zeros((0, comp.model.config.projection_dim), np.float32)
  return _batched(_jitted(comp, "image"), comp.params, [images01], batch_size)


def clip_text_embeddings(comp: CLIPComponents, prompts: Sequence[str], *,
                         batch_size: int = 32) -> np.ndarray:
  """(P, D) unit-norm CLIP text embeddings of `prompts` (padded / truncated to max_length)."""
  prompts = list(prompts)
  if not prompts:
    return np.zeros((0, comp.model.config.projection_dim), np.float32)
  tok = comp.tokenizer(prompts, padding="max_length", max_length=comp.max_length, truncation=True,
                       return_tensors="np")
  ids, mask = tok.input_ids.astype(np.int32), tok.attention_mask.astype(np.int32)
  return _batched(_jitted(comp, "text"), comp.params, [ids, mask], batch_size)


# --------------------------------------------------------------------------- scores

def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Row-wise cos(a_i, b_i) (float64; each row normalised here, so raw embeddings work too)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape or a.ndim != 2:
    raise ValueError(f"expected two (N, D) arrays of one shape, got {a.shape} and {b.shape}")
  a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
  b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
  return np.sum(a * b, axis=1)


def clip_scores_from_embeddings(image_emb: np.ndarray, text_emb: np.ndarray, *,
                           scale: float = DEFAULT_SCALE) -> np.ndarray:
  """(N,) per-pair CLIP scores scale * max(cos(image_emb_i, text_emb_i), 0)."""
  return float(scale) * np.maximum(_cosines(image_emb, text_emb), 0.0)


def cosine_distances(emb_a: np.ndarray, emb_b: np.ndarray) -> np.ndarray:
  """(N,) per-pair 1 - cos(emb_a_i, emb_b_i), in [0, 2]."""
  return 1.0 - _cosines(emb_a, emb_b)


def _prompt_list(prompts: Union[str, Sequence[str]], n: int) -> list:
  prompts = [prompts] * n if isinstance(prompts, str) else list(prompts)
  if len(prompts) != n:
    raise ValueError(f"expected one prompt per image ({n}), got {len(prompts)}")
  return prompts


def clip_scores(comp: CLIPComponents, images01: np.ndarray, prompts: Union[str, Sequence[str]], *,
                scale: float = DEFAULT_SCALE, batch_size: int = 32) -> np.ndarray:
  """(N,) per-pair CLIP scores of images (float NHWC in [0, 1]) and their prompts.

  `prompts`: one per image, or one string for all; each distinct prompt is encoded once.
  """
  images01 = np.asarray(images01)
  prompts = _prompt_list(prompts, len(images01))
  unique = list(dict.fromkeys(prompts))
  text = clip_text_embeddings(comp, unique, batch_size=batch_size)
  index = {p: i for i, p in enumerate(unique)}
  text = text[np.asarray([index[p] for p in prompts], np.int64)] if prompts else text
  image = clip_image_embeddings(comp, images01, batch_size=batch_size)
  return clip_scores_from_embeddings(image, text, scale=scale)


def mean_clip_score(comp: CLIPComponents, images01: np.ndarray,
                    prompts: Union[str, Sequence[str]], *, scale: float = DEFAULT_SCALE,
                    batch_size: int = 32) -> float:
  """Mean CLIP score scale * max(cos, 0) over the (image, prompt) pairs (see the module doc)."""
  scores = clip_scores(comp, images01, prompts, scale=scale, batch_size=batch_size)
  if not len(scores):
    raise ValueError("mean_clip_score of no images")
  return float(np.mean(scores))


def clip_embedding_distance(comp: CLIPComponents, images_a01: np.ndarray, images_b01: np.ndarray, *,
                            batch_size: int = 32) -> float:
  """Mean 1 - cos(E_img(a_i), E_img(b_i)) over two image sets paired by position (SGU Table 3)."""
  if len(images_a01) != len(images_b01) or not len(images_a01):
    raise ValueError(f"expected two non-empty image sets of one length, got {len(images_a01)} "
                     f"and {len(images_b01)}")
  emb_a = clip_image_embeddings(comp, images_a01, batch_size=batch_size)
  emb_b = clip_image_embeddings(comp, images_b01, batch_size=batch_size)
  return float(np.mean(cosine_distances(emb_a, emb_b)))
