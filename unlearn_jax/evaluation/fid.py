"""Inception FID, sFID, Inception Score and k-NN precision / recall, the standard way.

All four are read off the FID InceptionV3 (`unlearn_jax.models.inception`,
weights from `inception_weights.load_inception_variables`) and are comparable
with published numbers only under its input conventions: 8-bit images
(`inception_features` quantizes float input with `quantize_uint8`), bilinear
resize to 299 x 299 without antialiasing, scaling to [-1, 1].

* FID (Heusel et al. 2017): the Fréchet distance between Gaussians fitted to
  the pool3 features of real and generated images,
  ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^{1/2})
  (`frechet.frechet_distance`; unbiased covariances).  Reference statistics are
  cached per data set as an .npz with keys `mu` and `sigma`, the file format
  pytorch-fid and clean-fid exchange (`save_fid_stats`, `load_fid_stats`,
  `cached_fid_stats`).
* sFID (Nash et al. 2021): the same distance on the `spatial` features (the
  first 7 channels of mixed_6/conv, 2023-d at 299 x 299).
* Inception Score (Salimans et al. 2016): IS = exp(E_x KL(p(y|x) || p(y))),
  p(y) the mean of p(y|x) over a split; mean and standard deviation over
  `splits` equal consecutive splits (10 in the reference code).  p(y|x) is the
  softmax over the network's 1008 outputs without the fc bias
  (`logits_unbiased`), as the reference code computes it; pytorch-fid's network
  has no fc at all, so it has no IS.
* Precision and recall (Kynkäänniemi et al. 2019): each set's manifold is the
  union of balls around its feature vectors, each ball's radius the distance to
  the centre's k-th nearest neighbour within its own set (k = 3; the point
  itself does not count).  Precision is the share of generated features inside
  the real manifold, recall the share of real features inside the generated
  one.  Pairwise distances are computed in row blocks on the device, float32.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from typing import Callable, Dict, Optional, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from unlearn_jax import checkpoints
from unlearn_jax import mesh as mesh_lib
from unlearn_jax.errors import UserError
from unlearn_jax.evaluation import frechet
from unlearn_jax.evaluation import inception_weights
from unlearn_jax.models import inception

Stats = Tuple[np.ndarray, np.ndarray]


# --- features -----------------------------------------------------------------

@functools.partial(jax.jit, static_argnames=("size",))
def _forward(variables, images, size: Optional[int]) -> inception.InceptionFeatures:
  x = images.astype(jnp.float32)
  if images.dtype == jnp.uint8:
    x = x / 255.0
  if x.shape[-1] == 1:
    x = jnp.repeat(x, 3, axis=-1)  # grey -> RGB, as PIL's convert("RGB")
  return inception.InceptionV3().apply(variables, inception.preprocess(x, size))


def inception_features(variables, images, batch_size: int = 50, *, size: Optional[int] = inception.INPUT_SIZE,
                       quantize: bool = True) -> inception.InceptionFeatures:
  """The FID Inception's features of (N, H, W, C) images, C in {1, 3} (batched, jitted).

  Args:
    variables: the network's {"params", "batch_stats"} (`load_inception_variables`).
    images: uint8 in [0, 255], or float in [0, 1] (quantized to uint8 first
      unless `quantize=False`).  Grey images are repeated to RGB.
    batch_size: images per call, split over the mesh (`mesh.map_batches`); the last batch is
      padded, so one compile serves every call with the same batch and image shape.
    size: the side images are resized to (299, the standard); None keeps them
      as they are (any side >= 75; for tests).
    quantize: round float images to 8 bits, as a PNG of them would be.

  Returns:
    `InceptionFeatures` of numpy float32 arrays: pool3 (N, 2048), spatial
    (N, 7 h w), logits and logits_unbiased (N, 1008).
  """
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f"images must be (N, H, W, 1 or 3), got {images.shape}")
  if images.shape[0] == 0:
    raise ValueError("no images")
  if quantize and images.dtype != np.uint8:
    images = inception.quantize_uint8(images)
  return mesh_lib.map_batches(functools.partial(_forward, size=size), variables, images, batch_size,
                              label="Inception features")


# --- FID / sFID ---------------------------------------------------------------

def save_fid_stats(path: str, mu: np.ndarray, sigma: np.ndarray) -> None:
  """Write `mu` (D,) and `sigma` (D, D) as an .npz with keys mu, sigma (pytorch-fid's format)."""
  with open(path, "wb") as f:
    np.savez(f, mu=np.asarray(mu, np.float64), sigma=np.asarray(sigma, np.float64))


def load_fid_stats(path: str) -> Stats:
  """(mu, sigma) from an .npz with keys mu, sigma (e.g. pytorch-fid's `--save-stats` output)."""
  with np.load(path, allow_pickle=False) as f:
    mu, sigma = np.asarray(f["mu"], np.float64), np.asarray(f["sigma"], np.float64)
  if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
    raise ValueError(f"{path}: expected mu (D,) and sigma (D, D), got {mu.shape} and {sigma.shape}")
  return mu, sigma


def cached_fid_stats(path: str, features_fn: Callable[[], np.ndarray]) -> Stats:
  """A data set's (mu, sigma): read from `path` if it exists, else fitted to `features_fn()` and written there."""
  if os.path.exists(path):
    return load_fid_stats(path)
  mu, sigma = frechet.gaussian_stats(features_fn())
  save_fid_stats(path, mu, sigma)
  return mu, sigma


def fid(real: Union[np.ndarray, Stats], generated: Union[np.ndarray, Stats]) -> float:
  """Fréchet distance between two sets, each (N, D) features or its (mu, sigma).

  With pool3 features this is FID, with spatial features sFID.
  """
  def stats(x):
    return tuple(x) if isinstance(x, tuple) else frechet.gaussian_stats(x)
  return frechet.frechet_distance(*stats(real), *stats(generated))


# --- Inception Score ----------------------------------------------------------

def inception_score(logits: np.ndarray, splits: int = 10) -> Tuple[float, float]:
  """(mean, std) over `splits` consecutive splits of exp(E_x KL(p(y|x) || p(y))), p(y|x) = softmax(logits).

  Pass `InceptionFeatures.logits_unbiased` for the reference IS.
  """
  logits = np.asarray(logits, np.float64)
  if logits.ndim != 2 or logits.shape[0] < splits:
    raise ValueError(f"need (N, C) logits with N >= splits = {splits}, got {logits.shape}")
  log_p = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
  n = log_p.shape[0]
  scores = []
  for i in range(splits):
    part = log_p[i * n // splits:(i + 1) * n // splits]
    log_py = np.log(np.mean(np.exp(part), axis=0))
    kl = np.sum(np.exp(part) * (part - log_py), axis=1)
    scores.append(np.exp(np.mean(kl)))
  return float(np.mean(scores)), float(np.std(scores))


# --- precision / recall -------------------------------------------------------

def _sq_dists(a, b):
  """(n, m) squared Euclidean distances, clamped at 0."""
  ab = jnp.dot(a, b.T, precision=jax.lax.Precision.HIGHEST)
  d2 = jnp.sum(a * a, 1)[:, None] + jnp.sum(b * b, 1)[None, :] - 2.0 * ab
  return jnp.maximum(d2, 0.0)


@functools.partial(jax.jit, static_argnames=("k",))
def _kth_sq_radius(rows, points, k: int):
  """Squared distance from each row to its k-th nearest point, the row itself (distance 0) being the 0-th."""
  neg, _ = jax.lax.top_k(-_sq_dists(rows, points), k + 1)
  return -neg[:, k]


@jax.jit
def _inside(rows, centres, sq_radii):
  """Whether each row lies in some ball (centre, radius)."""
  return jnp.any(_sq_dists(rows, centres) <= sq_radii[None, :], axis=1)


def _blocks(fn: Callable, rows: np.ndarray, block: int, *args) -> np.ndarray:
  """`fn(rows_block, *args)` over row blocks of equal size (the last padded), concatenated."""
  out = []
  for i in range(0, rows.shape[0], block):
    r = rows[i:i + block]
    m = r.shape[0]
    if m < block:
      r = np.concatenate([r, np.zeros((block - m, r.shape[1]), r.dtype)])
    out.append(np.asarray(fn(r, *args))[:m])
  return np.concatenate(out)


def manifold_radii(features: np.ndarray, k: int = 3, block: int = 1024) -> np.ndarray:
  """Squared k-NN radii of a set's manifold balls (the point itself excluded)."""
  x = np.asarray(features, np.float32)
  if x.ndim != 2 or x.shape[0] <= k:
    raise ValueError(f"need (N, D) features with N > k = {k}, got {x.shape}")
  return _blocks(lambda r, p: _kth_sq_radius(r, p, k), x, min(block, x.shape[0]), jnp.asarray(x))


def precision_recall(real: np.ndarray, generated: np.ndarray, k: int = 3, block: int = 1024) -> Tuple[float, float]:
  """(precision, recall) of `generated` against `real` (N, D) features with k-NN manifolds.

  precision = share of generated points within the k-NN radius of some real point;
  recall = share of real points within the k-NN radius of some generated point.
  """
  real, generated = np.asarray(real, np.float32), np.asarray(generated, np.float32)
  r_real, r_gen = manifold_radii(real, k, block), manifold_radii(generated, k, block)

  def share_inside(x, centres, radii):
    inside = _blocks(_inside, x, min(block, x.shape[0]), jnp.asarray(centres), jnp.asarray(radii))
    return float(np.mean(inside))
  return share_inside(generated, real, r_real), share_inside(real, generated, r_gen)


# --- all at once --------------------------------------------------------------

def inception_metrics(real: inception.InceptionFeatures, generated: inception.InceptionFeatures, *,
                      k: int = 3, splits: int = 10) -> Dict[str, float]:
  """FID, sFID, IS (mean, std over splits) of the generated set, precision and recall, by name."""
  precision, recall = precision_recall(real.pool3, generated.pool3, k)
  is_mean, is_std = inception_score(generated.logits_unbiased, splits)
  return {"fid": fid(real.pool3, generated.pool3), "sfid": fid(real.spatial, generated.spatial),
          "inception_score": is_mean, "inception_score_std": is_std,
          "precision": precision, "recall": recall}


def load_fid_inception(path: str, field: str = "config.eval.inception_weights") -> dict:
  """The FID network's variables from `path` (`inception_weights.load_inception_variables`), a
  UserError naming `field` if it is not a readable weights file."""
  if not os.path.isfile(path):
    raise UserError(field, path, "expected a file: pytorch-fid's pt_inception-2015-12-05-6726825d.pth (needs "
                    "the convert extra) or its .npz (python -m unlearn_jax.evaluation.inception_weights)")
  try:
    return inception_weights.load_inception_variables(path)
  except (ValueError, KeyError, OSError, ImportError) as e:
    raise UserError(field, path, f"not the FID Inception's weights ({type(e).__name__}: {e})") from None


def fid_entries(variables, samples, reference, eval_cfg, *, source: str, stats_dir: str,
                reference_name: str) -> dict:
  """A results.json model entry's Inception FID (pool3), sFID (spatial features), Inception
  Score and k-NN precision / recall (Kynkaanniemi et al. 2019, on pool3, k =
  `eval_cfg.precision_recall_k`; 0: not computed; EraseDiff Table 1 reports them) of `samples`
  against the `reference` images, at `eval_cfg.inception_size` in batches of
  `eval_cfg.inception_batch_size` (a `settings.Eval`).

  The reference statistics (mu, sigma) are cached in `stats_dir`, keyed by the data `source`,
  the reference set, the input size and the weights file, so every model and every rerun
  reuses them (the .npz format pytorch-fid / clean-fid exchange); precision / recall need the
  reference's pool3 features themselves, cached beside them (`<key>_pool3_features.npy`)."""
  e = eval_cfg
  gen = inception_features(variables, samples, e.inception_batch_size, size=e.inception_size)
  key = hashlib.sha1(json.dumps({"data": source, "reference": reference_name, "n": len(reference),
                                 "size": e.inception_size, "weights": os.path.abspath(e.inception_weights)},
                                sort_keys=True).encode()).hexdigest()[:16]
  real = {}

  def features(kind):
    if not real:
      real.update(inception_features(variables, reference, e.inception_batch_size, size=e.inception_size)._asdict())
    return real[kind]

  os.makedirs(stats_dir, exist_ok=True)
  pool3 = cached_fid_stats(os.path.join(stats_dir, f"{key}_pool3.npz"), lambda: features("pool3"))
  spatial = cached_fid_stats(os.path.join(stats_dir, f"{key}_spatial.npz"), lambda: features("spatial"))
  score, score_std = inception_score(gen.logits_unbiased, splits=min(10, len(samples)))
  out = {"fid": fid(pool3, gen.pool3), "fid_spatial": fid(spatial, gen.spatial),
         "inception_score": score, "inception_score_std": score_std, "fid_num_samples": int(len(samples)),
         "fid_reference": f"{reference_name} ({len(reference)} images)", "fid_input_size": int(e.inception_size),
         "fid_features": "FID InceptionV3 (pytorch-fid's 2015-12-05 network): pool3; sFID: mixed_6/conv[:7]"}
  k = e.precision_recall_k
  if k and min(len(samples), len(reference)) > k:
    path = os.path.join(stats_dir, f"{key}_pool3_features.npy")
    if os.path.exists(path):
      real_pool3 = np.load(path)
    else:
      real_pool3 = np.asarray(features("pool3"), np.float32)
      checkpoints.save_npy(path, real_pool3)
    out["precision"], out["recall"] = precision_recall(real_pool3, gen.pool3, k)
    out["precision_recall_k"] = int(k)
  return out
