"""Rates on the evaluation classifier's outputs: unlearning ratio, AR, one top-k match rate, AR_CL.

Host-side numpy, after the evaluation classifier has produced predictions or
logits; nothing is jitted.

* Unlearning ratio (SGU Sec. 4.1, "UR"): the share of N generated samples that
  the evaluation classifier assigns to a forgotten class (the paper uses
  N = 10,000).  For the 2-D toy mixture the "classifier" is the nearest
  mixture component (`data.nearest_component`).  Forgetting a CelebA attribute
  (SGU Tables 2 and 5, "Bangs") is the same rate: the labels are the attribute
  (0 without, 1 with), the classifier is the binary attribute classifier and the
  forgotten labels are (1,) (`data.forget_labels`), so UR is the share of samples
  it sees the attribute in.
* Attack rate (DiMUM/DiMRA "accuracy rate", AR) on argmax predictions
  (`attack_rate`): the share of samples, generated conditioned on the forgotten
  class, that the evaluation classifier assigns to one of `target_classes`.
  With the forgotten class as the target it is AR_MU (after unlearning) or
  AR_DiMRA (during a relearning attack); with the alternative class as the
  target it is AR_CL.  This is the class-conditional digits' AR.
* `topk_match_rate(logits, labels, k)`: the one top-k rate; a sample counts when
  its label (or any of its labels) is among its k best classes.  k = 1 is
  `attack_rate` on the argmax.  UnlearnCanvas (DiMUM Sec. VI-B) uses k = 3:
    AR_MU, AR_DiMRA  `topk_match_rate(logits, prompt_style, k=3)`: an image counts as
                     the unlearned style when that style is among the top-3 classes.
    AR_CL            `ar_cl(logits, alt_style)`: top-1 share classified as the
                     alternative style (Abstractionism).
"""
from __future__ import annotations

from typing import Sequence, Union

import numpy as np

from unlearn_jax.errors import UserError

Classes = Union[int, Sequence[int], np.ndarray]
Labels = Union[int, Sequence[int], np.ndarray]


def wilson_interval(rate: float, n: int, z: float = 1.959963984540054) -> tuple:
  """Wilson's score interval (Wilson 1927) of a binomial rate observed on n samples:
  (c - h, c + h) with c = (p + z^2 / 2n) / (1 + z^2 / n) and
  h = z sqrt(p (1 - p) / n + z^2 / 4n^2) / (1 + z^2 / n); z = 1.96 gives 95 %.  Unlike
  p +- z sqrt(p (1 - p) / n) it stays inside [0, 1] and is not empty at p = 0 (a model
  that forgot shows its upper bound: 0 of 500 samples is "below 0.77 %", not "0 %").
  (nan, nan) without samples or for a non-finite rate."""
  if not n or not np.isfinite(rate):
    return float("nan"), float("nan")
  p, n, z2 = float(rate), float(n), z * z
  denom = 1.0 + z2 / n
  centre = (p + z2 / (2 * n)) / denom
  half = z * np.sqrt(max(p * (1 - p), 0.0) / n + z2 / (4 * n * n)) / denom
  return max(0.0, centre - half), min(1.0, centre + half)


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


def attack_rate(predicted: np.ndarray, target_classes: Classes) -> float:
  """Share of samples assigned to one of `target_classes` (the papers' AR).

  Args:
    predicted: int (N,) argmax predictions of the evaluation classifier.
    target_classes: a class index or a sequence of them (the forgotten class
      for AR_MU / AR_DiMRA, the alternative class for AR_CL).

  Returns:
    The rate in [0, 1], or NaN for an empty batch.  On logits, it is
    `topk_match_rate(logits, [target_classes], k=1)`.
  """
  targets = _target_array(target_classes)
  predicted = np.asarray(predicted)
  if predicted.ndim != 1:
    raise ValueError(f"predicted must be 1-D (N,), got shape {predicted.shape}")
  hits = np.isin(predicted, targets)
  return float(np.mean(hits)) if hits.size else float("nan")


# ----------------------------------------------------------------------------
# The top-k match rate (UnlearnCanvas's AR: k = 3) and AR_CL (DiMUM Sec. VI-B).
# ----------------------------------------------------------------------------
def _logits(logits) -> np.ndarray:
  a = np.asarray(logits, dtype=np.float64)
  if a.ndim != 2:
    raise ValueError(f"logits must be 2-D (N, C), got shape {a.shape}")
  return a


def topk_match_rate(logits, labels: Labels, k: int = 3) -> float:
  """Share of rows with a label among the row's top-k logits (DiMUM Sec. VI-B: k = 3).

  The one top-k rate: UnlearnCanvas's AR_MU / AR_DiMRA are k = 3 with each
  image's prompt style as its label; k = 1 with `[target_classes]` is
  `attack_rate` on the argmax predictions.

  Ties rank like a stable descending sort: a label's rank is the number of
  logits above it plus the number of equal logits at smaller class indices, so
  k = 1 is exactly the accuracy of `argmax` (for finite logits).

  Args:
    logits: (N, C) scores (logits or probabilities; only the order matters).
    labels: one label for every row (an int), (N,) one label per row, or (N, T)
      T labels per row, a row counting when any of them is in its top k; (1, T),
      e.g. `[forget_classes]`, gives every row the same T target classes.
    k: 1 <= k <= C.

  Returns:
    The rate in [0, 1], NaN for N = 0.
  """
  a = _logits(logits)
  n, c = a.shape
  if not 1 <= int(k) <= c:
    raise UserError("k", k, f"expected 1..{c} (the number of classes)")
  y = np.asarray(labels, dtype=np.int64)
  if y.ndim > 2 or (y.ndim == 2 and y.shape[1] == 0):
    raise ValueError(f"labels must be an int, (N,) or (N, T) with T >= 1, got shape {y.shape}")
  y = np.broadcast_to(y if y.ndim == 2 else y[..., None], (n, y.shape[1] if y.ndim == 2 else 1))
  if n and (y.min() < 0 or y.max() >= c):
    raise ValueError(f"labels must be in [0, {c}), got range [{y.min()}, {y.max()}]")
  if n == 0:
    return float("nan")
  ly = a[np.arange(n)[:, None], y][..., None]                       # (N, T, 1) the labels' scores
  before = (a[:, None, :] > ly) | ((a[:, None, :] == ly) & (np.arange(c) < y[..., None]))
  return _mean((before.sum(axis=-1) < int(k)).any(axis=-1))


def ar_cl(logits, alt_labels: Labels) -> float:
  """AR_CL (DiMUM Sec. VI-B): the share of rows whose argmax class is the alternative
  style (one label for all rows, or (N,)); NaN for N = 0.

  `topk_match_rate(logits, alt_labels, k=1)` for finite logits; kept on `np.argmax`
  so that rows with NaNs count as before (argmax picks the first NaN).
  """
  a = _logits(logits)
  if a.shape[0] == 0:
    return float("nan")
  y = np.broadcast_to(np.asarray(alt_labels, dtype=np.int64), (a.shape[0],))
  return _mean(np.argmax(a, axis=1) == y)
