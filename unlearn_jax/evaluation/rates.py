"""Rates on the evaluation classifier's outputs: unlearning ratio, AR, AR_CL, top-k match.

Host-side numpy, after the evaluation classifier has produced predictions or
logits; nothing is jitted.

* Unlearning ratio (SGU Sec. 4.1, "UR"): the share of N generated samples that
  the evaluation classifier assigns to a forgotten class (the paper uses
  N = 10,000).  For the 2-D toy mixture the "classifier" is the nearest
  mixture component (`data.nearest_component`).
* Attack rate (DiMUM/DiMRA "accuracy rate", AR): the share of samples,
  generated conditioned on the forgotten class, that the evaluation classifier
  assigns to one of `target_classes`.  With the forgotten class as the target
  it is AR_MU (after unlearning) or AR_DiMRA (during a relearning attack); with
  the alternative class as the target it is AR_CL.  `top_k_attack_rate` is the
  UnlearnCanvas variant: a sample counts when any of its top-k classes is a
  target (k = 3 there).
* DiMUM's attack rates (Sec. VI-B) on the UnlearnCanvas style classifier's logits:
    AR_MU, AR_DiMRA  `topk_match_rate(logits, forget_style, k=3)`: an image counts as
                     the unlearned style when that style is among the top-3 classes.
    AR_CL            `ar_cl(logits, alt_style)`: top-1 share classified as the
                     alternative style (Abstractionism).
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np

from unlearn_jax.errors import UserError

Classes = Union[int, Sequence[int], np.ndarray]
Labels = Union[int, Sequence[int], np.ndarray]


def _mean(x: np.ndarray) -> float:
  return float(np.mean(x)) if x.size else float("nan")


def unlearning_ratio(predicted: np.ndarray, forget_labels: Sequence[int]) -> float:
  """Share of samples assigned to any of the forgotten classes."""
  return float(np.mean(np.isin(predicted, np.asarray(forget_labels)))) if len(predicted) else float("nan")


# ----------------------------------------------------------------------------
# Attack rate (AR).
# ----------------------------------------------------------------------------
def _target_array(target_classes: Classes) -> np.ndarray:
  """`target_classes` as a non-empty 1-D int array (a bare int is one class)."""
  targets = np.atleast_1d(np.asarray(target_classes))
  if targets.ndim != 1 or targets.size == 0 or not np.issubdtype(targets.dtype, np.integer):
    raise UserError("target_classes", target_classes,
                    "expected a class index or a non-empty sequence of class indices")
  return targets


def attack_rate(predicted: np.ndarray, target_classes: Classes,
                top_k_predictions: Optional[np.ndarray] = None) -> float:
  """Share of samples assigned to one of `target_classes` (the papers' AR).

  Args:
    predicted: int (N,) argmax predictions of the evaluation classifier.
    target_classes: a class index or a sequence of them (the forgotten class
      for AR_MU / AR_DiMRA, the alternative class for AR_CL).
    top_k_predictions: optional int (N, k) top-k class indices per sample; when
      given, a sample counts if any of its k classes is a target (this
      replaces the argmax rule; N must match `predicted`).

  Returns:
    The rate in [0, 1], or NaN for an empty batch.
  """
  targets = _target_array(target_classes)
  predicted = np.asarray(predicted)
  if predicted.ndim != 1:
    raise ValueError(f"predicted must be 1-D (N,), got shape {predicted.shape}")
  if top_k_predictions is None:
    hits = np.isin(predicted, targets)
  else:
    top_k = np.asarray(top_k_predictions)
    if top_k.ndim != 2 or top_k.shape[0] != predicted.shape[0]:
      raise ValueError(f"top_k_predictions must have shape ({predicted.shape[0]}, k), "
                       f"got {top_k.shape}")
    hits = np.isin(top_k, targets).any(axis=1)
  return float(np.mean(hits)) if hits.size else float("nan")


def top_k_classes(logits: np.ndarray, k: int) -> np.ndarray:
  """Int (N, k) indices of the k largest logits per row, best first (ties: lower index first)."""
  logits = np.asarray(logits)
  if logits.ndim != 2:
    raise ValueError(f"logits must be 2-D (N, C), got shape {logits.shape}")
  num_classes = logits.shape[1]
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= num_classes:
    raise UserError("k", k, f"expected an integer in [1, {num_classes}] (the number of classes)")
  return np.argsort(-logits, axis=1, kind="stable")[:, :k]


def top_k_attack_rate(logits: np.ndarray, target_classes: Classes, k: int) -> float:
  """Share of samples whose top-k classes contain a target (UnlearnCanvas uses k = 3).

  Args:
    logits: (N, C) classifier logits (or probabilities; only the order matters).
    target_classes: a class index or a sequence of them.
    k: how many of the best classes to look at; 1 <= k <= C.

  Returns:
    The rate in [0, 1], or NaN for an empty batch.  With k = 1 it equals
    `attack_rate` on the argmax predictions.
  """
  top_k = top_k_classes(logits, k)
  return attack_rate(top_k[:, 0], target_classes, top_k_predictions=top_k)


# ----------------------------------------------------------------------------
# UnlearnCanvas's top-k match rate and AR_CL (DiMUM Sec. VI-B).
# ----------------------------------------------------------------------------
def _logits(logits) -> np.ndarray:
  a = np.asarray(logits, dtype=np.float64)
  if a.ndim != 2:
    raise ValueError(f"logits must be 2-D (N, C), got shape {a.shape}")
  return a


def topk_match_rate(logits, labels: Labels, k: int = 3) -> float:
  """Share of rows whose label is among the row's top-k logits (DiMUM Sec. VI-B: k = 3).

  Ties rank like a stable descending sort: the label's rank is the number of
  logits above it plus the number of equal logits at smaller class indices, so
  k = 1 is exactly the accuracy of `argmax`.

  Args:
    logits: (N, C) scores (logits or probabilities).
    labels: one label for every row, or (N,) labels.
    k: 1 <= k <= C.

  Returns:
    The rate in [0, 1], NaN for N = 0.
  """
  a = _logits(logits)
  n, c = a.shape
  if not 1 <= int(k) <= c:
    raise UserError("k", k, f"expected 1..{c} (the number of classes)")
  y = np.broadcast_to(np.asarray(labels, dtype=np.int64), (n,))
  if n and (y.min() < 0 or y.max() >= c):
    raise ValueError(f"labels must be in [0, {c}), got range [{y.min()}, {y.max()}]")
  if n == 0:
    return float("nan")
  ly = a[np.arange(n), y][:, None]
  before = (a > ly) | ((a == ly) & (np.arange(c)[None, :] < y[:, None]))
  return _mean(before.sum(axis=1) < int(k))


def ar_cl(logits, alt_labels: Labels) -> float:
  """AR_CL (DiMUM Sec. VI-B): the share of rows whose argmax class is the alternative
  style (one label for all rows, or (N,)); NaN for N = 0."""
  a = _logits(logits)
  if a.shape[0] == 0:
    return float("nan")
  y = np.broadcast_to(np.asarray(alt_labels, dtype=np.int64), (a.shape[0],))
  return _mean(np.argmax(a, axis=1) == y)
