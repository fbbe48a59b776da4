"""The evaluation classifier: its training step, predictions, features, and sample quality.

* `classifier_step`: one cross-entropy step (pure; jitted over the mesh by the train loop).
* `predict` / `classify` / `embed`: batched, jitted inference on images in
  [0, 1]; one jit per (kind, apply_fn), cached in `_JITTED`.
* Sample quality beside every rate (`sample_quality`): the share of samples the
  classifier assigns to a class with probability >= 0.9, and the total-variation
  distance of the samples' class histogram from the data's (over all classes, and
  over the retained classes only, renormalised).  A rate computed on samples the
  classifier does not recognise measures nothing; `recognised` says whether the
  confident share reaches `config.eval.min_confident_share`.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from unlearn_jax import mesh as mesh_lib
from unlearn_jax import train_state as ts


def classifier_step(state: ts.TrainState, batches, rng, consts=None, *, apply_fn: Callable, tx):
  """One cross-entropy step of the evaluation classifier on the global batch (pure; jitted
  over the mesh by the train loop)."""
  del consts
  batch = batches["all"]
  dropout_rng = jax.random.fold_in(rng, state.step)

  def loss_fn(params):
    logits = apply_fn({"params": params}, batch["x"], train=True, rngs={"dropout": dropout_rng})
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]).mean()
    acc = jnp.mean(jnp.argmax(logits, -1) == batch["labels"])
    return loss, acc

  (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"loss/classifier": loss, "accuracy/train": acc}
  return state.replace(step=state.step + 1, params=params, ema_params=params, opt_state=opt_state), metrics


def predict(apply_fn: Callable, params, x01: np.ndarray, batch_size: int = 500) -> np.ndarray:
  """Class predictions for images in [0, 1] (batched, jitted): `classify`'s first output."""
  return classify(apply_fn, params, x01, batch_size)[0]


#: jitted classify / embed functions per (kind, apply_fn): one compile per classifier, not per call.
_JITTED: dict = {}


def _jitted(kind: str, apply_fn: Callable) -> Callable:
  key = (kind, apply_fn)
  if key not in _JITTED:
    if kind == "classify":
      def f(p, x):
        prob = jax.nn.softmax(apply_fn({"params": p}, x), -1)
        return jnp.argmax(prob, -1), jnp.max(prob, -1)
    else:
      def f(p, x):
        return apply_fn({"params": p}, x, method="features")
    _JITTED[key] = jax.jit(f)
  return _JITTED[key]


def classify(apply_fn: Callable, params, x01: np.ndarray, batch_size: int = 500):
  """(predicted class (N,), its softmax probability (N,)) for images in [0, 1] (batched, jitted)."""
  out = mesh_lib.map_batches(_jitted("classify", apply_fn), params, np.asarray(x01), batch_size,
                             label="classifier")
  if out is None:
    return np.zeros((0,), np.int32), np.zeros((0,), np.float32)
  return out


def histogram_tv(counts, reference_counts, classes: Optional[Sequence[int]] = None) -> float:
  """Total-variation distance 0.5 sum_c |p_c - q_c| between two class histograms, each
  normalised (over `classes` only when given); 0 = same shares, 1 = disjoint."""
  p = np.asarray(counts, np.float64)
  q = np.asarray(reference_counts, np.float64)
  if classes is not None:
    idx = np.asarray(classes, np.int64)
    p, q = p[idx], q[idx]
  if p.sum() <= 0 or q.sum() <= 0:
    return 1.0
  return float(0.5 * np.abs(p / p.sum() - q / q.sum()).sum())


def sample_quality(pred: np.ndarray, confidence: np.ndarray, data_labels: np.ndarray, num_classes: int,
                   retained_classes: Sequence[int], *, threshold: float = 0.9,
                   min_confident_share: float = 0.5) -> dict:
  """Whether the classifier recognises the samples its rates are computed on (see the module doc).

  `data_labels`: the labels of the data the model was trained to generate before unlearning (D).
  """
  counts = np.bincount(np.asarray(pred, np.int64), minlength=num_classes)
  ref = np.bincount(np.asarray(data_labels, np.int64), minlength=num_classes)
  share = float(np.mean(np.asarray(confidence) >= threshold)) if len(confidence) else 0.0
  return {"confident_share": share, "confidence_threshold": float(threshold),
          "histogram_tv": histogram_tv(counts, ref),
          "retain_histogram_tv": histogram_tv(counts, ref, retained_classes),
          "recognised": bool(share >= min_confident_share)}


def embed(apply_fn: Callable, params, x01: np.ndarray, batch_size: int = 500) -> np.ndarray:
  """The classifier's penultimate features (B, F) of images in [0, 1] (for Fréchet distances)."""
  out = mesh_lib.map_batches(_jitted("embed", apply_fn), params, np.asarray(x01), batch_size,
                             label="classifier features")
  return np.zeros((0, 0), np.float32) if out is None else out
